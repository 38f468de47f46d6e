# The packaged unit templates (Jinja2); a directory, not a module.
