
from monai_oct.networks.relaynet import ReLayNet
from monai_oct.networks.segmentation import SEGMENTATION_NETWORKS, load_weights, segmentation_network
