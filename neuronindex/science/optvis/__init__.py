"""Activation maximisation as Lucent's optvis splits it: `param` (image parameterisations),
`transforms` (robustness), `objectives` (what is maximised), `render` (the optimisation loop)."""
