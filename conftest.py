# Loads the zooconform plugin; nothing else lives here (see harness/plugin.py).
pytest_plugins = ["harness.plugin"]
