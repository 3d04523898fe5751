"""Train the CNN on the bundled digits with the hand-derived gradients.

    python examples/train_cnn.py [--epochs 40] [--gradients custom|autodiff]
"""
import argparse

from jaxbp.train import Config, fit

p = argparse.ArgumentParser()
p.add_argument("--epochs", type=int, default=40)
p.add_argument("--gradients", default="custom", choices=["custom", "autodiff"])
p.add_argument("--run-dir", default=None)
a = p.parse_args()

result = fit(Config(model="cnn", epochs=a.epochs, gradients=a.gradients, run_dir=a.run_dir))
print(f"CNN ({a.gradients} gradients): test accuracy {100 * result.test_accuracy:.2f}%")
