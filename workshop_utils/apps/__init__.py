"""Applications on top of the lesson: the command line (cli, commands), notebook widgets and the web API."""
