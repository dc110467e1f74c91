"""Built-in checks, one module per family. Each exports ``CHECK``; modules import torch lazily,
inside functions, because the registry is read in the torch-free pytest process."""
