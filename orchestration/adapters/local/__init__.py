"""The laptop adapters of the ports: files and SQLite under the data dir, no server needed."""
