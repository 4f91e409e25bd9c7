"""autotune's reference documents (*.md beside this file), shipped in the wheel as package data so that
an installed autotune can serve them (the MCP resource autotune://docs/task-file). See README.md here."""
