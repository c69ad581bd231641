import pytest
import torch

from dcn.datamodules import GeometricDeformation, MNISTDataModule


def test_reads_torchvision_mnist_files_and_keeps_images_with_labels(mnist_root, mnist_label_pixel):
    dm = MNISTDataModule(root=str(mnist_root), val_size=20, canvas_size=32, batch_size=8, num_workers=0)
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (40, 20, 20)
    assert torch.bincount(dm.val_set.targets, minlength=10).tolist() == [2] * 10  # stratified
    for dataset in (dm.train_set, dm.val_set, dm.test_set):
        for i in range(len(dataset)):
            image, label = dataset[i]
            assert image.shape == (1, 32, 32)
            # Padded by 2 on each side: the fabricated 8x8 label patch sits at 12:20.
            assert image[0, 14, 14].item() * 255 == pytest.approx(mnist_label_pixel(int(label)))
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 1, 32, 32) and images.dtype == torch.float32 and targets.dtype == torch.int64
    assert (dm.in_channels, dm.num_classes) == (1, 10)


def test_deformation_is_fixed_for_evaluation_and_redrawn_for_training(mnist_root):
    deformation = GeometricDeformation(rotation=30, scale=(0.8, 1.2))
    a = MNISTDataModule(root=str(mnist_root), val_size=20, deformation=deformation, num_workers=0)
    b = MNISTDataModule(root=str(mnist_root), val_size=20, deformation=deformation, num_workers=0)
    a.setup()
    b.setup()
    torch.testing.assert_close(a.val_set[0][0], b.val_set[0][0])
    torch.testing.assert_close(a.test_set[1][0], b.test_set[1][0])
    assert not torch.allclose(a.val_set[0][0], a.val_set.images[0].float() / 255)  # deformed
    assert not torch.allclose(a.train_set[0][0], a.train_set[0][0])


def test_missing_data_names_the_root_and_how_to_get_it(tmp_path):
    dm = MNISTDataModule(root=str(tmp_path / "nowhere"), download=False)
    with pytest.raises(FileNotFoundError) as info:
        dm.setup("fit")
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message
    assert "data.download=true" in message and "train-images-idx3-ubyte" in message


def test_validation_split_larger_than_the_training_set_is_an_error(mnist_root):
    with pytest.raises(ValueError, match="no training samples"):
        MNISTDataModule(root=str(mnist_root), val_size=60).setup()


@pytest.mark.parametrize("kwargs, key", [({"canvas_size": 20}, "canvas_size"), ({"val_size": 0}, "val_size")])
def test_bad_arguments_name_the_config_key(tmp_path, kwargs, key):
    with pytest.raises(ValueError, match=f"data.{key}"):
        MNISTDataModule(root=str(tmp_path), **kwargs)
