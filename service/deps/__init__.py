"""FastAPI dependencies: get_settings → get_state → get_principal → require_role/scope."""
