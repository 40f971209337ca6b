"""The PyTorch target: a readable standalone nn.Module source file per spec."""
