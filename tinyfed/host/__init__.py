"""The orchestrator side of tinyfed (aggregation, simulation); grows with later issues."""
