"""Container images: import (docker-archive, OCI archive and layout, podman:, registries),
a content-addressed store under $KVMVM_HOME/images, and one read-only root filesystem image
per image digest (docs/images.md).

    from kvmvm.images import ImageStore
    img = ImageStore().resolve("alpine:3.19")
    img.digest, img.config, img.rootfs, img.rootfs_type
"""

from kvmvm.images.errors import ImageImportError, ImageInUse, ImageNotFound, MissingTool
from kvmvm.images.store import Image, ImageStore

__all__ = ["Image", "ImageStore", "ImageNotFound", "ImageImportError", "ImageInUse", "MissingTool"]
