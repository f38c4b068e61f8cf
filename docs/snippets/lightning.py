from mynets import Net

import torchweights as tw

# A PyTorch Lightning .ckpt: {"state_dict": {"model.backbone.0.weight": ...}, "optimizer_states": [...],
# "hyper_parameters": {...}, "epoch": ...}. No Lightning install is needed to read it.
ckpt = tw.open("epoch=9.ckpt")  # records only: no tensor bytes read
hparams = ckpt.extras["hyper_parameters"]
print(ckpt.extras["epoch"], hparams)

model = Net(classes=hparams["classes"])
report = tw.load_into(model, ckpt)  # finds the state_dict container, strips the LightningModule's "model."
assert report.ok, report
