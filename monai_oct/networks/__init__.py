
from monai_oct.networks.checkpoint import adapt_input_channels, load_checkpoint, maybe_load_weights, save_checkpoint
from monai_oct.networks.diffusion import check_image_size, conditional_diffusion_unet
from monai_oct.networks.gdnet import GDNet
from monai_oct.networks.relaynet import ReLayNet
from monai_oct.networks.segmentation import SEGMENTATION_NETWORKS, load_weights, segmentation_network
from monai_oct.networks.ynet import YNet
