"""One decoding of images everywhere (scoring.images): transparency composited onto white the same way for
training/scoring and for the API's thumbnails, 16-bit greyscale scaled, and the pixel bound checked before
decoding, with messages that never show the server's paths."""

from __future__ import annotations

import io
import json
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from clipmem.backend.images import DecodeBusy, PixelBudget, thumbnail
from clipmem.backend.ingest import ingest
from clipmem.backend.synthetic_run import write_synthetic_run
from clipmem.scoring.data.sources import load_dataset
from clipmem.scoring.errors import ClipmemError
from clipmem.scoring.images import ImageError, decode_rgb

# a half-transparent red pixel over white: red stays 255, green and blue get white's share, 255 - 128
HALF_RED = (255, 0, 0, 128)
HALF_RED_ON_WHITE = (255, 127, 127)


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A valid-looking 1-bit PNG header claiming width x height pixels, with (almost) no pixel data: the
    shape of a decompression bomb, without spending memory or time to make one."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def palette_with_transparent_index() -> Image.Image:
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.putpixel((1, 0), 1)
    img.info["transparency"] = bytes([0, 255])  # index 0 (red) fully transparent, index 1 (blue) opaque
    return img


@pytest.mark.parametrize("img, expected", [
    (Image.new("RGBA", (2, 2), HALF_RED), [HALF_RED_ON_WHITE] * 4),
    # grey 0 at alpha 128: 0 * 128/255 + 255 * 127/255 = 127
    (Image.new("LA", (2, 2), (0, 128)), [(127, 127, 127)] * 4),
    (palette_with_transparent_index(), [(255, 255, 255), (0, 0, 255)]),
    # 16-bit greyscale: v -> round(v * 255 / 65535), not clipped at 255 (Pillow's convert would make 1000 white)
    (Image.fromarray(np.array([[0, 1000, 32896, 65535]], dtype=np.uint16)),
     [(0, 0, 0), (4, 4, 4), (128, 128, 128), (255, 255, 255)]),
])
def test_decoding_known_answers(img, expected, recwarn):
    decoded = decode_rgb(png(img))
    assert decoded.mode == "RGB"
    assert [tuple(p) for p in np.asarray(decoded).reshape(-1, 3).tolist()] == expected
    # Pillow's "Palette images with Transparency expressed in bytes should be converted to RGBA images"
    assert not [w for w in recwarn if "Transparency" in str(w.message)]


def test_scoring_and_thumbnails_composite_the_same(db, client, tmp_path):
    """The same half-transparent red file, read as a training/scoring pair and served as a thumbnail."""
    run = write_synthetic_run(tmp_path / "decoding", 10, 10, 5, 2, seed=43)
    image = run / "data" / "images" / "0000010.png"
    image.write_bytes(png(Image.new("RGBA", (24, 24), HALF_RED)))
    # scoring: a folder source holding that file, decoded as training and scoring load pixels
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "half-red.png").write_bytes(image.read_bytes())
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "half-red.png", "text": "a red square"}) + "\n")
    pixels = load_dataset("folder", folder).load_pixels([0], 24)[0].permute(1, 2, 0).reshape(-1, 3).numpy()
    assert {tuple(p) for p in pixels.tolist()} == {HALF_RED_ON_WHITE}
    # API: the thumbnail of the pair whose image it is
    ingest(db.engine, run)
    try:
        response = client.get("/runs/decoding/images/pair-0000010", params={"size": 48})
        assert response.status_code == 200, response.text
        served = np.asarray(Image.open(io.BytesIO(response.content)))
        assert served.shape == (48, 48, 3)
        assert {tuple(p) for p in served.reshape(-1, 3).tolist()} == {HALF_RED_ON_WHITE}
    finally:
        client.delete("/runs/decoding")


def test_pixel_bound_is_checked_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_claiming(20_000, 20_000))  # 400 megapixels claimed: Pillow itself raises a bomb error
    with pytest.raises(ImageError, match=r"20000 x 20000 = 400,000,000 pixels, over the limit of 50,000,000"):
        decode_rgb(bomb)
    # 144 megapixels: under Pillow's own error limit, so it would be decoded (about 1 GB) without ours
    with pytest.raises(ImageError, match="over the limit"):
        decode_rgb(png_claiming(12_000, 12_000))
    with pytest.raises(ImageError, match="over the limit of 99 pixels"):
        decode_rgb(png(Image.new("RGB", (10, 10))), max_pixels=99)
    assert decode_rgb(png(Image.new("RGB", (10, 10))), max_pixels=100).size == (10, 10)


def test_scoring_names_the_oversized_file(tmp_path):
    (tmp_path / "huge.png").write_bytes(png_claiming(20_000, 20_000))
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "huge.png", "text": "a big one"}) + "\n")
    with pytest.raises(ClipmemError, match=r"huge\.png.*over the limit"):
        load_dataset("folder", tmp_path).open_checked(0)


def test_decoding_messages_hold_no_path(tmp_path):
    garbage = tmp_path / "secret-dir" / "x.png"
    garbage.parent.mkdir()
    garbage.write_bytes(b"not an image at all")
    with pytest.raises(ImageError) as caught:
        decode_rgb(garbage)
    assert "secret-dir" not in str(caught.value) and str(tmp_path) not in str(caught.value)


@pytest.fixture
def served_run(db, client, tmp_path):
    path = write_synthetic_run(tmp_path / "bombs", 10, 10, 5, 2, seed=44)
    ingest(db.engine, path)
    yield path
    client.delete("/runs/bombs")


@pytest.mark.parametrize("content, says", [
    (png_claiming(20_000, 20_000), "20000 x 20000 = 400,000,000 pixels, over the limit"),
    (png_claiming(12_000, 12_000), "over the limit"),
    (b"<html>not an image</html>", "not an image file"),
    (png(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)))[:2000],
     "truncated"),
])
def test_bad_images_answer_404_without_server_paths(client, served_run, content, says):
    (served_run / "data" / "images" / "0000010.png").write_bytes(content)
    response = client.get("/runs/bombs/images/pair-0000010")
    assert response.status_code == 404
    detail = response.json()["detail"]
    assert "pair-0000010" in detail and says in detail
    assert str(served_run) not in detail and "/tmp" not in detail and "0000010.png" not in detail


def test_server_pixel_limit_is_a_setting(db, served_run, monkeypatch):
    from fastapi.testclient import TestClient

    from clipmem.backend.api.app import create_app
    from clipmem.backend.settings import Settings

    monkeypatch.setenv("CLIPMEM_MAX_IMAGE_PIXELS", str(24 * 24 - 1))  # the synthetic images are 24 x 24
    with TestClient(create_app(Settings(database_url=db.url, api_token=None))) as small:
        response = small.get("/runs/bombs/images/pair-0000010")
    assert response.status_code == 404 and "24 x 24 = 576 pixels, over the limit of 575" in response.json()["detail"]


def test_pixel_budget_admits_large_decodes_one_at_a_time():
    budget = PixelBudget(100)
    lock, in_use, peak = threading.Lock(), [0], [0]

    def decode(pixels: int, together: threading.Barrier | None = None) -> None:
        with budget.hold(pixels):
            with lock:
                in_use[0] += pixels
                peak[0] = max(peak[0], in_use[0])
            if together:
                together.wait(timeout=10)  # breaks (and the test fails) unless all are admitted at once
            time.sleep(0.02)
            with lock:
                in_use[0] -= pixels

    def run_all(jobs) -> int:
        peak[0] = 0
        threads = [threading.Thread(target=decode, args=job) for job in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert budget.in_use == 0
        return peak[0]

    assert run_all([(60,)] * 4) == 60             # never two 60-pixel decodes at once
    together = threading.Barrier(10)
    assert run_all([(10, together)] * 10) == 100  # ten 10-pixel ones all at once
    assert not together.broken
    assert run_all([(500,), (10,)]) == 500        # one over the whole budget runs, alone


def test_jpeg_thumbnails_decode_at_a_reduced_scale():
    photo = io.BytesIO()
    Image.new("RGB", (4000, 3000), (10, 200, 30)).save(photo, format="JPEG", quality=90)
    opened = []

    class Recording(PixelBudget):
        def hold(self, pixels):
            opened.append(pixels)
            return super().hold(pixels)

    data, media_type = thumbnail(photo.getvalue(), 256, budget=Recording(10**9))
    assert media_type == "image/jpeg" and Image.open(io.BytesIO(data)).size == (256, 192)
    assert opened == [500 * 375]  # JPEG's 1/8 scale, still at least 256 px on each side


def test_pixel_budget_bounds_the_wait():
    budget = PixelBudget(100, wait_s=0.2, max_waiting=1)
    outcome = []

    def waiter() -> None:
        try:
            with budget.hold(10):
                outcome.append("admitted")
        except DecodeBusy:
            outcome.append("busy")

    with budget.hold(100):
        started = time.monotonic()
        with pytest.raises(DecodeBusy):  # after waiting its 0.2 s
            with budget.hold(10):
                pass
        assert time.monotonic() - started >= 0.2
        budget.wait_s = 30
        thread = threading.Thread(target=waiter)
        thread.start()
        deadline = time.monotonic() + 10
        while budget.waiting == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        with pytest.raises(DecodeBusy):  # one waits already: refused at once
            with budget.hold(10):
                pass
        assert time.monotonic() - started < 1
    thread.join()  # the waiter is admitted once the budget is free
    assert outcome == ["admitted"] and budget.in_use == 0 and budget.waiting == 0


def test_busy_decoding_is_a_503_with_retry_after(client, served_run):
    budget = client.app.state.pixel_budget
    with budget.hold(budget.limit):
        saved = budget.wait_s, budget.max_waiting
        budget.wait_s, budget.max_waiting = 0.1, 0
        try:
            response = client.get("/runs/bombs/images/pair-0000011")
        finally:
            budget.wait_s, budget.max_waiting = saved
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    assert client.get("/runs/bombs/images/pair-0000011").status_code == 200
