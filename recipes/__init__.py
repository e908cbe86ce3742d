"""The recipes that ship with adaptive-exit (YAML files with a README per dataset), found by
name: ``adaptive-exit recipes`` lists them, ``adaptive-exit run toy-demo`` runs one."""
