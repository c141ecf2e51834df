from uotsel.cli import entry

entry()
