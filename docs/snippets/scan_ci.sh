# exit 0: clean; 1: a dangerous finding; 2: a file could not be fully read
torchweights scan checkpoints/model.pt
torchweights scan --json checkpoints/model.pt > scan.json
if torchweights scan checkpoints/*.pt; then echo "all clean"; else echo "refused: exit $?"; fi
