"""Options do what they say: single-image classify reports good and bad images, --png without matplotlib is an error
that names what to install, bench --startup honours --repeat."""

from pathlib import Path

from refvit.cli import main

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "golden" / "models" / "digits-bit"
IMAGE = ROOT / "golden" / "images" / "chelsea_landscape.jpg"


def test_single_image_classify_prints_the_good_and_lists_the_bad(tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    code = main(["classify", str(MODEL), str(bad), str(IMAGE), str(tmp_path / "missing.jpg"), "--backend", "numpy",
                 "--top-k", "2"])
    out, err = capsys.readouterr()
    assert code == 1
    assert out.splitlines()[0] == str(IMAGE) and len(out.splitlines()) == 3  # the good image and its top 2
    assert f"not classified: {bad}: not an image file" in err and "missing.jpg: no such image file" in err
    assert "1 of 3 images classified, 2 could not be read" in err and "Traceback" not in err


def test_png_without_matplotlib_names_what_to_install(tmp_path, capsys, monkeypatch):
    from refvit import evaluate

    monkeypatch.setattr(evaluate, "matplotlib_available", lambda: False)
    data = tmp_path / "data" / "3"
    data.mkdir(parents=True)
    (data / "a.jpg").write_bytes(IMAGE.read_bytes())
    assert main(["evaluate", str(MODEL), str(data.parent), "--png", str(tmp_path / "c.png"), "--backend",
                 "numpy"]) == 2
    err = capsys.readouterr().err
    assert "needs matplotlib" in err and "pip install matplotlib" in err
    assert not (tmp_path / "c.png").exists()
    # the default PNG beside --out: the run goes on and the report says why there is no PNG
    monkeypatch.setattr(evaluate, "confusion_png", lambda *a: False)
    assert main(["evaluate", str(MODEL), str(data.parent), "--out", str(tmp_path / "r.jsonl"), "--backend",
                 "numpy"]) == 0
    assert "r.confusion.png not written: matplotlib is not installed" in capsys.readouterr().out


def test_bench_startup_honours_repeat(monkeypatch, capsys):
    from refvit.bench import command

    seen = []
    monkeypatch.setattr(command, "startup", lambda runs=3, include_torch=True: seen.append(runs) or [])
    monkeypatch.setattr(command.workers, "sgemm_gflops_at", lambda *a, **k: 100.0)
    assert main(["bench", "--models", "none", "--startup", "--repeat", "2", "--json", "--peers"]) == 0
    assert seen == [2]
