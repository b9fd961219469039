"""Tiles of large images: the grid's counts and positions per magnification, the box reduction, the tile and slide
sets read from disk, and their errors and config rules."""

import numpy as np
import pytest
from PIL import Image

from mochi_hvs.config import ConfigError, load_config
from mochi_hvs.data.datasets import DatasetError, check_splits, load_images
from mochi_hvs.data.tiles import Tiling, TilingError, cut_tiles, tile_grid


def test_grid_counts_and_positions_per_magnification():
    tiling = Tiling(size=16, stride=8, magnifications=(1, 2))
    tiles = tile_grid(100, 70, tiling, image=3)
    ones, twos = [t for t in tiles if t.magnification == 1], [t for t in tiles if t.magnification == 2]
    # magnification 1: side 16 every 8 px, 1 + (100 - 16) // 8 = 11 rows, 1 + (70 - 16) // 8 = 7 columns
    assert len(ones) == 11 * 7 and {t.side for t in ones} == {16}
    # magnification 2: side 32 every 16 px, 1 + (100 - 32) // 16 = 5 rows, 1 + (70 - 32) // 16 = 3 columns
    assert len(twos) == 5 * 3 and {t.side for t in twos} == {32}
    assert tiles == ones + twos  # magnification 1 first, then row by row
    assert [(t.top, t.left) for t in ones[:8]] == [(0, 0), (0, 8), (0, 16), (0, 24), (0, 32), (0, 40), (0, 48), (8, 0)]
    assert (ones[-1].top, ones[-1].left) == (80, 48) and (twos[-1].top, twos[-1].left) == (64, 32)
    assert all(t.top + t.side <= 100 and t.left + t.side <= 70 and t.image == 3 for t in tiles)


def test_default_stride_is_the_side():
    tiles = tile_grid(64, 64, Tiling(size=32))
    assert [(t.top, t.left) for t in tiles] == [(0, 0), (0, 32), (32, 0), (32, 32)]


def test_a_tile_larger_than_the_image_is_an_error():
    with pytest.raises(TilingError, match=r"a tile of 128 px \(data.tile_size=32 x magnification 4\) is larger than "
                                          r"slide.png \(100 x 200 px\)"):
        tile_grid(200, 100, Tiling(size=32, magnifications=(1, 4)), name="slide.png")


def test_cut_tiles_reduces_each_field_of_view_by_block_means():
    rng = np.random.default_rng(0)
    image = (rng.integers(0, 64, (40, 40, 3)) * 4).astype(np.uint8)  # multiples of 4: 2x2 means of them are exact
    tiles = tile_grid(40, 40, Tiling(size=8, stride=8, magnifications=(1, 2)))
    out = cut_tiles(image, tiles, 8)
    assert out.shape == (25 + 4, 8, 8, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], image[:8, :8])
    last = tiles[-1]  # magnification 2: a 16 px square averaged over 2 x 2 blocks
    square = image[last.top:last.top + 16, last.left:last.left + 16].astype(np.float64)
    expected = square.reshape(8, 2, 8, 2, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(out[-1], expected, atol=0.5)


def write_png(path, height, width, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


def test_slides_are_tiled_as_they_load(tmp_path):
    write_png(tmp_path / "a.png", 64, 96)
    write_png(tmp_path / "sub" / "b.png", 48, 48, seed=1)
    images = load_images("slides", str(tmp_path), "pretrain", Tiling(size=16, stride=16, magnifications=(1, 2)))
    # a: 4 x 6 at 1x, 2 x 3 at 2x; b: 3 x 3 at 1x, 1 x 1 at 2x
    assert len(images) == 24 + 6 + 9 + 1 and images.array.shape[1:] == (16, 16, 3)
    assert (images.labels == -1).all()
    first = np.asarray(Image.open(tmp_path / "a.png"))[:16, :16]
    np.testing.assert_array_equal(images.array[0], first)


def test_tiles_folder_reads_every_image_unlabelled(tmp_path):
    for name in ("x/1.png", "x/y/2.jpg", "3.png"):
        write_png(tmp_path / name, 20, 20)
    (tmp_path / "notes.txt").write_text("not an image")
    images = load_images("tiles", str(tmp_path), "pretrain")
    assert len(images) == 3 and sorted(p.rsplit("/", 1)[-1] for p in images.files) == ["1.png", "2.jpg", "3.png"]
    assert (images.labels == -1).all() and images.image(0).size == (20, 20)


@pytest.mark.parametrize("name", ["tiles", "slides"])
def test_missing_or_empty_folders_are_one_line_errors(tmp_path, name):
    with pytest.raises(DatasetError, match=f"data.root={tmp_path / 'none'} does not exist"):
        check_splits(name, str(tmp_path / "none"), ("pretrain",))
    with pytest.raises(DatasetError, match=f"{name}: no image files"):
        load_images(name, str(tmp_path), "pretrain")


def test_config_rules_of_unlabelled_sets_and_orientation():
    with pytest.raises(ConfigError, match="eval.knn_every.*must be 0 with data.name=slides"):
        load_config(None, ["data.name=slides", "eval.knn_every=1"])
    with pytest.raises(ConfigError, match="lc.enabled.*data.orientation"):
        load_config(None, ["lc.enabled=true", "data.image_size=64", "data.orientation=true"])
    with pytest.raises(ConfigError, match="data.magnifications"):
        load_config(None, ["data.magnifications=[1,0]"])
    with pytest.raises(ConfigError, match="data.stain_jitter"):
        load_config(None, ["data.stain_jitter=[0.1]"])
    cfg = load_config(None, ["data.name=slides", "data.magnifications=[1,2,4]", "data.stain_jitter=[0.2,0.02]"])
    assert Tiling.of(cfg.data) == Tiling(64, None, (1, 2, 4))


@pytest.mark.slow
@pytest.mark.parametrize("augment_on", ["device", "cpu"])
def test_pretraining_on_slides_with_the_tissue_augmentations(tmp_path, augment_on):
    from mochi_hvs.pretrain import report
    from mochi_hvs.train.loop import Trainer

    write_png(tmp_path / "slides" / "a.png", 64, 64)
    cfg = load_config(None, [f"output_dir={tmp_path}", "name=run", "data.name=slides",
                             f"data.root={tmp_path / 'slides'}", "data.tile_size=16", "data.tile_stride=8",
                             "data.magnifications=[1,2]", "data.image_size=16", "data.stain_jitter=[0.2,0.02]",
                             "data.orientation=true", f"data.augment_on={augment_on}", "data.workers=0",
                             "optim.batch_size=16", "moco.queue_size=32", "model.bn_splits=2", "optim.epochs=1",
                             "device=cpu"])
    summary = Trainer(cfg).fit()
    assert summary["steps"] == (49 + 9) // 16 and "knn_top1" not in summary  # 7 x 7 + 3 x 3 tiles, no labels
    assert (tmp_path / "run" / "last.pth").is_file()
    assert report(summary).splitlines() == [f"trained for 3 steps in {summary['train_seconds']:.0f} s"]
