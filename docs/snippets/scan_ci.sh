# exit 0: clean; 1: a dangerous finding; 2: a file could not be fully read
torchweights scan checkpoints/model.pt
torchweights scan --json checkpoints/model.pt > scan.json
# a whole folder, recursively: one line per file and a summary ("2 files: 2 clean"); --fail-on picks what fails
torchweights scan checkpoints/ --exclude 'suspicious*' --fail-on dangerous,unreadable
if torchweights scan checkpoints/*.pt; then echo "all clean"; else echo "refused: exit $?"; fi
