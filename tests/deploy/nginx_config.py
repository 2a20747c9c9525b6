"""A small reader/writer for nginx configuration files.

Enough of nginx's syntax for our own files (directives, blocks, quoted strings,
comments, relative includes): tests inspect the shipped configuration as a tree, and
render it into a temp folder with another upstream, listen port and paths, so that
the config under test is the shipped one, not a copy that could drift.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

NGINX_DIR = Path(__file__).resolve().parents[2] / "deploy" / "nginx"
MAIN_FILE = "nginx.conf"

# Debian's absolute paths used by the shipped files, redirected by `render_to`.
PID_PATH = "/run/nginx.pid"
LOG_DIR = "/var/log/nginx/"
TEMP_DIR = "/var/lib/nginx/"


@dataclass
class Directive:
    name: str
    args: list[str]  # raw tokens: quotes kept, so that dumping round-trips
    block: list[Directive] | None = None
    file: str = ""

    @property
    def values(self) -> list[str]:
        """The arguments with their quotes removed."""
        return [unquote(arg) for arg in self.args]

    def children(self, name: str) -> list[Directive]:
        return [d for d in self.block or [] if d.name == name]

    def child(self, name: str) -> Directive:
        found = self.children(name)
        assert len(found) == 1, f"expected one {name!r} in {self.name} {self.args}, got {found}"
        return found[0]

    def values_of(self, name: str) -> list[list[str]]:
        return [d.values for d in self.children(name)]


@dataclass
class Config:
    """The parsed files, by name relative to the config folder."""

    files: dict[str, list[Directive]] = field(default_factory=dict)

    @property
    def main(self) -> list[Directive]:
        return self.files[MAIN_FILE]

    def expanded(self, name: str = MAIN_FILE) -> list[Directive]:
        """The directives of `name` with every `include` replaced by its contents."""
        return [self._expand(d) for d in self._inline(self.files[name])]

    def _inline(self, directives: list[Directive]) -> Iterator[Directive]:
        for directive in directives:
            if directive.name == "include":
                yield from self._inline(self.files[directive.values[0]])
            else:
                yield directive

    def _expand(self, directive: Directive) -> Directive:
        if directive.block is None:
            return directive
        block = [self._expand(d) for d in self._inline(directive.block)]
        return Directive(directive.name, directive.args, block, directive.file)


_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<quoted>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*')
  | (?P<punct>[;{}])
  | (?P<word>(?:\$\{[^}]*\}|[^\s;{}"'#]|\#)+)
    """,
    re.VERBOSE,
)


def tokenize(text: str) -> Iterator[str]:
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ValueError(f"cannot tokenize nginx config at {text[pos : pos + 30]!r}")
        pos = match.end()
        if match.lastgroup in ("space", "comment"):
            continue
        yield match.group()


def parse(text: str, file: str = "") -> list[Directive]:
    tokens = list(tokenize(text))
    directives, pos, closed = _parse_block(tokens, 0, file)
    if closed:
        raise ValueError(f"{file}: unexpected '}}' at token {pos}")
    return directives


def _parse_block(tokens: list[str], pos: int, file: str) -> tuple[list[Directive], int, bool]:
    """Directives up to the matching '}' (closed=True) or the end of the tokens."""
    directives: list[Directive] = []
    words: list[str] = []
    while pos < len(tokens):
        token = tokens[pos]
        pos += 1
        if token == ";":
            if not words:
                raise ValueError(f"{file}: empty directive")
            directives.append(Directive(words[0], words[1:], None, file))
            words = []
        elif token == "{":
            block, pos, closed = _parse_block(tokens, pos, file)
            if not closed or not words:
                raise ValueError(f"{file}: unclosed or unnamed block {words}")
            directives.append(Directive(words[0], words[1:], block, file))
            words = []
        elif token == "}":
            if words:
                raise ValueError(f"{file}: missing ';' after {words}")
            return directives, pos, True
        else:
            words.append(token)
    if words:
        raise ValueError(f"{file}: missing ';' after {words}")
    return directives, pos, False


def unquote(token: str) -> str:
    if len(token) >= 2 and token[0] == token[-1] and token[0] in "'\"":
        return re.sub(r"\\(.)", r"\1", token[1:-1])
    return token


def dump(directives: list[Directive], indent: int = 0) -> str:
    lines: list[str] = []
    pad = "    " * indent
    for d in directives:
        head = " ".join([d.name, *d.args])
        if d.block is None:
            lines.append(f"{pad}{head};")
        else:
            lines.append(f"{pad}{head} {{")
            lines.append(dump(d.block, indent + 1))
            lines.append(f"{pad}}}")
    return "\n".join(line for line in lines if line)


def load(directory: Path = NGINX_DIR) -> Config:
    """Parse the main file and every file it includes (relative to `directory`)."""
    config = Config()
    pending = [MAIN_FILE]
    while pending:
        name = pending.pop()
        if name in config.files:
            continue
        config.files[name] = parse((directory / name).read_text(), name)
        pending.extend(d.values[0] for d in walk(config.files[name]) if d.name == "include")
    return config


def walk(directives: list[Directive]) -> Iterator[Directive]:
    for d in directives:
        yield d
        if d.block is not None:
            yield from walk(d.block)


def http_block(config: Config) -> Directive:
    (http,) = [d for d in config.expanded() if d.name == "http"]
    return http


def server_block(config: Config) -> Directive:
    return http_block(config).child("server")


def location(config: Config, *args: str) -> Directive:
    found = [d for d in server_block(config).children("location") if d.values == list(args)]
    assert len(found) == 1, f"expected one location {args}, got {len(found)}"
    return found[0]


def render_to(
    config: Config,
    target: Path,
    *,
    listen: str,
    upstream: str,
    overrides: dict[tuple[str, ...], dict[str, list[str]]] | None = None,
) -> Path:
    """Write the config into `target` with a test's listen address, upstream and paths.

    `overrides` maps a location's arguments (e.g. ("/v1/patients/",)) to directives
    to set in it: {"proxy_buffering": ["on"]}. Each substitution must apply, so a
    change to the shipped files that a test relies on fails loudly here.
    """
    config = copy.deepcopy(config)  # the caller's (possibly shared) tree stays as shipped
    target.mkdir(parents=True, exist_ok=True)
    (target / "logs").mkdir(exist_ok=True)
    (target / "temp").mkdir(exist_ok=True)
    counts = {"listen": 0, "server": 0, "pid": 0, "log": 0, "temp": 0}
    pending_overrides = dict(overrides or {})

    def rewrite(directives: list[Directive], parent: Directive | None) -> None:
        for d in directives:
            if d.name == "listen":
                d.args = [listen, *d.args[1:]]
                counts["listen"] += 1
            elif d.name == "server" and parent is not None and parent.name == "upstream":
                d.args = [upstream, *d.args[1:]]
                counts["server"] += 1
            elif d.name == "pid":
                assert d.values == [PID_PATH]
                d.args = [str(target / "nginx.pid")]
                counts["pid"] += 1
            elif d.name in ("error_log", "access_log") and d.values[0] != "off":
                assert d.values[0].startswith(LOG_DIR), d.values
                d.args = [str(target / "logs" / d.values[0][len(LOG_DIR) :]), *d.args[1:]]
                counts["log"] += 1
            elif d.name.endswith("_temp_path"):
                assert d.values[0].startswith(TEMP_DIR), d.values
                d.args = [str(target / "temp" / d.values[0][len(TEMP_DIR) :])]
                counts["temp"] += 1
            if d.block is not None:
                if d.name == "location" and tuple(d.values) in pending_overrides:
                    for name, args in pending_overrides.pop(tuple(d.values)).items():
                        d.block = [c for c in d.block if c.name != name]
                        d.block.append(Directive(name, args))
                rewrite(d.block, d)

    for name, directives in config.files.items():
        rewrite(directives, None)
        (target / name).write_text(dump(directives) + "\n")
    assert counts == {"listen": 1, "server": 1, "pid": 1, "log": 2, "temp": 5}, counts
    assert not pending_overrides, f"locations not found: {list(pending_overrides)}"
    return target / MAIN_FILE
