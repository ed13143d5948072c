"""`make results`: the chain of runs behind the README's headline figures, and the page they write."""
