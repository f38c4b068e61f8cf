import torchweights as tw

# A Git LFS pointer (cloned without `git lfs pull`), a truncated download, a login page saved as the file:
# each is diagnosed from the content before any parsing, with its own code and the fix
for path, code in [("lfs_pointer.bin", "lfs-pointer"), ("truncated.pt", "truncated"), ("login.bin", "html-page")]:
    try:
        tw.load(path)
    except tw.TorchWeightsError as e:
        assert e.code == code, (path, e.code)
        print(f"{path}: [{e.code}] {e.message}")
        print(f"  more: {e.docs_url}")

# The same classes are builtins too: code that caught ValueError/OSError around torch.load keeps working
try:
    tw.load("truncated.pt")
except ValueError as e:
    assert isinstance(e, tw.CorruptCheckpointError)
