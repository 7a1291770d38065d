"""The catalogue: peewee models and the queries over them.

Free of pynetdicom and Starlette (shared/STYLE.md, 1): the DIMSE and HTTP edges translate
their requests into calls here.
"""
