"""The built-in GAN variants; each module registers its class with @register."""
