"""The `swarmrl` command and the pieces that compose the roles: the CLI (`cli`), the local
demo (`demo`) and the tiny-model kit (`modelkit`). Role packages never import this one."""

__version__ = "0.1.0"
