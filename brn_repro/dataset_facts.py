"""What is known of the built-in datasets before any file is read. Standard library only:
the config checks and the analysis read these without loading torch or the data package."""

# Per-channel mean and std of the training sets (on the 0-1 scale), for normalization.
STATS = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
DATASET_NAMES = ("fashion_mnist", "cifar10", "cifar100", "imagefolder")
# Classes of the built-in sets, known before any file is read (config validation
# checks the probe's labels per batch against them); an ImageFolder's come from its folders.
NUM_CLASSES = {"fashion_mnist": 10, "cifar10": 10, "cifar100": 100}
IMAGE_SIZES = {"fashion_mnist": 28, "cifar10": 32, "cifar100": 32}  # native; the model check reads it before loading
TRAIN_IMAGES = {"fashion_mnist": 60_000, "cifar10": 50_000, "cifar100": 50_000}  # for epochs
