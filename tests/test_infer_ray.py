"""`naturelm infer --ray` on a local Ray: the rows of a local run, exactly once, through actor and driver kills."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest
from cli_runner import run_cli

# The same greedy decoding for every run here, so Ray rows and local rows must be equal.
DECODING = ["--smoke", "--num-beams", "1", "--max-new-tokens", "20", "--batch-size", "1",
            "--no-progress"]
RAY = ["--ray-cpus-per-actor", "0.5"]  # two CPUs: half a CPU for the actor leaves room for a second actor


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "naturelm.cli", *args]


def _env(tmp_path) -> dict:
    return {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}


def _rows(path) -> list[str]:
    return sorted(path.read_text().splitlines())


@pytest.fixture(scope="module")
def cluster():
    """One local Ray for the module (the CLI runs join it by address), shut down after."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(audio_dir, tmp_path_factory):
    """The shared recordings plus bad files: text renamed .wav, an empty .mp3, a directory named .wav."""
    folder = tmp_path_factory.mktemp("ray_recordings")
    for path in sorted(audio_dir.iterdir()):
        shutil.copy(path, folder / path.name)
    (folder / "text.wav").write_text("this is not audio\n" * 100)
    (folder / "empty.mp3").write_bytes(b"")
    (folder / "directory.wav").mkdir()
    return folder


@pytest.fixture(scope="module")
def local_run(folder, tmp_path_factory):
    """The rows and summary line of the same run without Ray."""
    output = tmp_path_factory.mktemp("local_run") / "local.jsonl"
    done = run_cli(["infer", str(folder), *DECODING, "--output", str(output)])
    assert done.returncode == 1, done.stderr  # the bad files failed
    rows = _rows(output)
    failed = {os.path.basename(json.loads(r)["file"]) for r in rows if json.loads(r)["error"]}
    assert failed == {"text.wav", "empty.mp3", "directory.wav"}
    return rows, _counts(done.stderr)


def _counts(stderr: str) -> str:
    """"N files, W windows, F failed" from the summary line."""
    summary = [line for line in stderr.splitlines() if line.startswith("naturelm: ")][-1]
    return ", ".join(summary.removeprefix("naturelm: ").split(", ")[:3])


def _journal(output) -> list[str]:
    """The finished files' lines of the journal (its first line holds the run's settings)."""
    journal = output.with_name(output.name + ".progress")
    return journal.read_text().splitlines()[1:] if journal.exists() else []


def _wait_for_finished_files(process, output, count: int = 1) -> None:
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None and len(_journal(output)) < count:
        time.sleep(0.01)


def _model_actor_processes() -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any("ModelActor" in part for part in process.info["cmdline"] or []):
            found.append(process)
    return found


def test_a_ray_run_gives_the_rows_of_a_local_run_through_an_actor_kill(cluster, folder, local_run, tmp_path):
    """The killed actor is restarted and every window is written once: the rows and counts of the local run."""
    output = tmp_path / "ray.jsonl"
    process = subprocess.Popen(_command("infer", str(folder), *DECODING, *RAY, "--ray", cluster, "--output",
                                        str(output)), env=_env(tmp_path), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    _wait_for_finished_files(process, output)
    actors = _model_actor_processes()
    assert len(actors) == 1, actors
    os.kill(actors[0].pid, signal.SIGKILL)
    finished_at_kill = len(_journal(output))
    files = len(list(folder.iterdir()))
    assert 1 <= finished_at_kill < files, "the kill must land mid-run for this test to mean anything"
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 1, stderr
    rows, counts = local_run
    assert _rows(output) == rows
    assert _counts(stderr) == counts


def test_a_killed_driver_resumes_without_duplicate_or_missing_rows(cluster, folder, local_run, tmp_path):
    output = tmp_path / "ray.jsonl"
    args = ["infer", str(folder), *DECODING, *RAY, "--ray", cluster, "--output", str(output)]
    process = subprocess.Popen(_command(*args), env=_env(tmp_path), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    _wait_for_finished_files(process, output)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = len(_journal(output))
    files = len(list(folder.iterdir()))
    assert 1 <= finished < files, "the kill must land mid-run for this test to mean anything"

    resumed = run_cli([*args, "--resume"])  # this process is connected to the cluster already
    assert resumed.returncode == 1, resumed.stderr
    assert f"naturelm: {files - finished} files" in resumed.stderr  # only the rest was run
    assert _rows(output) == local_run[0]
    assert len(_journal(output)) == files


def test_actors_the_cluster_cannot_place_are_refused(cluster):
    import ray

    from naturelm.ray_infer import RayResources, check_resources

    cpus = int(ray.cluster_resources()["CPU"])
    with pytest.raises(ValueError, match=f"need more than the cluster's {cpus} CPUs"):
        check_resources(RayResources(actors=cpus + 1, cpus_per_actor=1.0))
    with pytest.raises(ValueError, match="GPUs"):
        check_resources(RayResources(actors=1, cpus_per_actor=0.5, gpus_per_actor=1.0))
    check_resources(RayResources(actors=cpus, cpus_per_actor=1.0))


def test_urls_are_listed_and_answered_as_their_local_files(folder, audio_dir):
    """A filesystem URL (file:// here; s3://, gs:// the same way through pyarrow) lists the same audio files and
    gives the same rows as the local path, through the engine as an actor runs it."""
    from audio_naturelm import find_audio_files
    from naturelm.infer import make_task
    from naturelm.loading import load
    from naturelm.ray_infer import WindowSettings, answer_files, list_audio_files
    from pipeline_naturelm import build_prompt

    local = [p for p in find_audio_files([str(folder)]) if p.is_file()]  # a URL listing keeps files only
    urls = list_audio_files([f"file://{folder}"])
    assert urls == [f"file://{p}" for p in local]
    model, processor = load(smoke=True)
    settings, prompt = WindowSettings(10.0, 5.0), build_prompt(processor, "Caption the audio.")
    task = make_task(None, max_new_tokens=2, num_beams=1, do_sample=False)
    from_urls = answer_files(model, processor, urls, task, prompt, settings, batch_size=4)
    from_paths = answer_files(model, processor, [str(p) for p in local], task, prompt, settings, batch_size=4)
    assert [r.key for r in from_urls] == urls
    readable = {p.name for p in audio_dir.iterdir()}  # the folder adds only bad files to these
    for url, path, by_url, by_path in zip(urls, local, from_urls, from_paths):
        assert by_url.rows == by_path.rows
        assert (by_url.error is None) == (path.name in readable)
        if by_url.error is not None:  # a reason names the URL, never the fetched temporary file
            assert by_url.error.replace(url, str(path)) == by_path.error and "naturelm-" not in by_url.error
    assert any(r.rows for r in from_urls)


def test_without_ray_installed_the_error_says_how_to_install_it(folder, tmp_path):
    script = ("import sys; sys.modules['ray'] = None\n"  # as if Ray were not installed
              "import naturelm.cli\n"
              "sys.exit(naturelm.cli.main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", script, "infer", str(folder), "--smoke", "--ray"],
                          env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "pip install 'naturelm[ray]'" in done.stderr
    imported = subprocess.run([sys.executable, "-c", "import sys, naturelm.cli; print('ray' in sys.modules)"],
                              env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert imported.stdout.strip() == "False", imported.stderr  # the base install does not need Ray
