"""Study-specific code: experiments built on the library (agents, trainer, data) that the library
itself does not import. Each study owns its task, numbers and figures here, outside the core."""
