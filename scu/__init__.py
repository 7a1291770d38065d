"""DIMSE client side: C-STORE sends, C-FIND, bounded bulk C-MOVE/C-GET retrieval."""
