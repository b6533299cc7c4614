"""No models of its own. The module exists because Django sends
post_migrate only to apps with a models module, and the role table must
be re-applied after every migrate (see roles.py)."""
