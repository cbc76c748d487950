"""Board profiles shipped with edge-infer: one TOML file per board (see edge_infer.boards)."""
