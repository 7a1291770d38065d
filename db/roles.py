"""The HTTP API's roles, apart from the account tables so that the command line can offer
them as choices without loading peewee and the catalogue (every command builds the whole
parser, and ``push`` on a sending site needs neither)."""

ROLES = ("admin", "viewer", "uploader")
