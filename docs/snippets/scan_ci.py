import torchweights as tw

# Static: nothing from the files is imported or called
failed = False
for path in ["checkpoints/model.pt", "checkpoints/suspicious.pt"]:
    report = tw.scan(path)
    print(path, report.verdict)
    for f in report.findings:
        print(" ", f.severity, f.code, f.name)
    failed |= report.verdict != "clean"
assert failed  # suspicious.pt names os.system
if failed:
    print("refusing the checkpoints: not all clean")  # in a CI job: sys.exit(1)
