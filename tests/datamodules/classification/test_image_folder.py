import shutil
from pathlib import Path

import pytest
import torch

from dcn.datamodules import ImageFolderDataModule


def test_loads_class_folders_at_the_configured_size(image_folder_root):
    dm = ImageFolderDataModule(root=image_folder_root, image_size=16, batch_size=4, num_workers=0)
    assert dm.class_names == ["cat", "dog", "emu"] and dm.num_classes == 3 and dm.in_channels == 3
    dm.setup("fit")
    dm.setup("test")
    assert [len(s) for s in (dm.train_set, dm.val_set, dm.test_set)] == [6, 6, 6]
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        images, targets = next(iter(loader))
        assert images.shape == (4, 3, 16, 16) and images.dtype == torch.float32
        assert targets.dtype == torch.int64
    assert sorted(t for _, t in dm.test_set.samples) == [0, 0, 1, 1, 2, 2]


def test_normalisation_uses_the_given_statistics(image_folder_root):
    plain = ImageFolderDataModule(
        image_folder_root, image_size=8, mean=[0, 0, 0], std=[1, 1, 1], train_augment=False
    )
    shifted = ImageFolderDataModule(
        image_folder_root, image_size=8, mean=[0.5] * 3, std=[0.25] * 3, train_augment=False
    )
    plain.setup("test")
    shifted.setup("test")
    x, y = plain.test_set[0][0], shifted.test_set[0][0]
    assert 0 <= x.min() and x.max() <= 1
    torch.testing.assert_close(y, (x - 0.5) / 0.25)


def test_grayscale_gives_one_channel(image_folder_root):
    dm = ImageFolderDataModule(image_folder_root, image_size=12, grayscale=True, num_workers=0)
    dm.setup("fit")
    assert dm.in_channels == 1 and dm.train_set[0][0].shape == (1, 12, 12)


def test_missing_split_directory_is_named(tmp_path, image_folder_root):
    root = tmp_path / "data"
    shutil.copytree(image_folder_root, root)
    shutil.rmtree(root / "val")
    dm = ImageFolderDataModule(root)
    dm.setup("test")  # test/ is there
    with pytest.raises(FileNotFoundError, match=str(root / "val")):
        dm.setup("fit")


def test_splits_with_different_classes_are_an_error(tmp_path, image_folder_root):
    root = tmp_path / "data"
    shutil.copytree(image_folder_root, root)
    shutil.rmtree(root / "test" / "dog")
    with pytest.raises(ValueError, match="same class folders"):
        ImageFolderDataModule(root).setup("test")


def test_channel_count_of_statistics_is_checked(image_folder_root):
    with pytest.raises(ValueError, match="data.mean needs 1 value"):
        ImageFolderDataModule(image_folder_root, grayscale=True, mean=[0.5, 0.5, 0.5], std=[0.2])


def test_empty_class_folder_names_split_and_path(tmp_path, image_folder_root):
    root = tmp_path / "data"
    shutil.copytree(image_folder_root, root)
    for image in (root / "val" / "emu").iterdir():
        image.unlink()
    with pytest.raises(
        FileNotFoundError, match=rf"the val split's class folder {root / 'val' / 'emu'} holds no images"
    ):
        ImageFolderDataModule(root).setup("fit")


def test_truncated_image_names_the_file(tmp_path, image_folder_root, truncate_file):
    from dcn.images import ImageReadError

    root = tmp_path / "data"
    shutil.copytree(image_folder_root, root)
    bad = truncate_file(root / "train" / "dog" / "1.png")
    dm = ImageFolderDataModule(root, image_size=8, num_workers=0)
    dm.setup("fit")
    index = [i for i, (path, _) in enumerate(dm.train_set.samples) if Path(path) == bad][0]
    with pytest.raises(ImageReadError, match=rf"cannot read image {bad}"):
        dm.train_set[index]
