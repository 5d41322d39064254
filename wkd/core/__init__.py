"""Pure decisions: facts in, plans out, no I/O (docs/design.md, "The map of the house").

Imports only wkd.errors, wkd.model, wkd.values and wkd.token (tests/unit/test_layers.py).
"""
