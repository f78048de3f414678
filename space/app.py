"""NatureLM-audio as a Gradio Space: chat about a recording, answers along a long recording, scores over your own
labels. Settings come from environment variables (see README.md); the model loads on the first request.

Run locally: `NATURELM_MODEL=path/to/converted python space/app.py` (or `NATURELM_MODEL=tiny` for a tiny random
model that shows the whole app without any weights).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `engine` sits beside this file

import gradio as gr  # noqa: E402

import engine  # noqa: E402
from engine import PRESETS, SETTINGS, Settings  # noqa: E402

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus")
MODEL_JOBS = "model"  # one concurrency group for every job that runs the model, limited by NATURELM_CONCURRENCY
HEADER = """# 🐦 NatureLM-audio
An audio-language model for bioacoustics ([paper](https://arxiv.org/abs/2411.07186)): ask what is calling, caption a
recording, name call types and life stages, or score your own labels. It listens to 10 s at a time."""
SMOKE_WARNING = ("⚠️ **Smoke mode**: this Space runs a tiny *random* model (`NATURELM_MODEL=tiny`); every answer "
                 "is meaningless. Point `NATURELM_MODEL` at real weights to use it.")


def example_recordings(settings: Settings, limit: int = 8) -> list[str]:
    """Recordings offered as examples (`NATURELM_EXAMPLES_DIR`, or `examples/` beside this file)."""
    if not settings.examples_dir or not Path(settings.examples_dir).is_dir():
        return []
    found = sorted(p for p in Path(settings.examples_dir).iterdir() if p.suffix.lower() in AUDIO_EXTENSIONS)
    return [str(p) for p in found[:limit]]


def _audio_input(label: str, elem_id: str, settings: Settings) -> gr.Audio:
    return gr.Audio(
        sources=["upload", "microphone"], type="filepath", elem_id=elem_id,
        label=f"{label} (up to {settings.max_file_mb:g} MB and {settings.max_seconds:g} s)",
    )


def _enable() -> tuple[gr.DownloadButton, gr.DownloadButton]:
    """Download buttons become clickable once a run has given them a file."""
    return gr.DownloadButton(interactive=True), gr.DownloadButton(interactive=True)


def _chat_tab(settings: Settings, alpha: gr.Slider, max_new_tokens: gr.Slider) -> None:
    with gr.Row():
        with gr.Column(scale=2):
            audio = _audio_input("Recording", "chat-audio", settings)
            info = gr.Markdown(label="About the recording", elem_id="chat-info")
            if examples := example_recordings(settings):
                gr.Examples([[e] for e in examples], inputs=[audio], label="Example recordings")
        with gr.Column(scale=3):
            chatbot = gr.Chatbot(label="Conversation", elem_id="chatbot", height=360, render_markdown=False,
                                 placeholder="Upload or record a clip, then ask about it. Follow-up questions "
                                             "keep the conversation.")
            question = gr.Textbox(label="Question", elem_id="chat-question", lines=1, max_lines=4,
                                  placeholder="What is the common name for the focal species in the audio?")
            with gr.Row():
                ask = gr.Button("Ask", variant="primary", elem_id="chat-ask")
                gr.ClearButton([chatbot, question], value="New conversation", elem_id="chat-clear")
            gr.Examples([[q] for q in PRESETS.values()], inputs=[question], example_labels=list(PRESETS),
                        label="Presets")
    # A new recording starts a new conversation.
    audio.change(lambda a: ([], engine.describe_audio(a)), [audio], [chatbot, info], api_visibility="private")
    gr.on([ask.click, question.submit], engine.chat, [audio, question, chatbot, alpha, max_new_tokens],
          [chatbot, question], api_name="chat", concurrency_id=MODEL_JOBS)


def _long_recording_tab(settings: Settings, alpha: gr.Slider, max_new_tokens: gr.Slider) -> None:
    with gr.Row():
        with gr.Column(scale=2):
            audio = _audio_input("Long recording", "long-audio", settings)
            query = gr.Dropdown(list(PRESETS.values()), value=PRESETS["Species"], allow_custom_value=True,
                                label="Question asked of every window (pick or type)", elem_id="long-query")
            with gr.Row():
                window = gr.Slider(1, engine.CLIP_SECONDS, value=engine.CLIP_SECONDS, step=0.5, label="Window (s)",
                                   elem_id="long-window")
                hop = gr.Slider(1, engine.CLIP_SECONDS, value=engine.CLIP_SECONDS, step=0.5, label="Hop (s)",
                                elem_id="long-hop")
            gr.Markdown("A hop shorter than the window makes overlapping windows (stacked on the timeline).")
            start = gr.Button("Run over the whole recording", variant="primary", elem_id="long-run")
            if examples := example_recordings(settings):
                gr.Examples([[e] for e in examples], inputs=[audio], label="Example recordings")
        with gr.Column(scale=3):
            summary = gr.Markdown(label="Summary", elem_id="long-summary")
            timeline = gr.Image(label="Spectrogram with the answer of every window", type="filepath",
                                elem_id="timeline", interactive=False, show_label=False,
                                buttons=["download", "fullscreen"])
            table = gr.Dataframe(label="Answers per window", elem_id="long-table", interactive=False)
            with gr.Row():
                raven = gr.DownloadButton("Raven selection table (.txt)", elem_id="raven-download", interactive=False)
                csv = gr.DownloadButton("CSV", elem_id="csv-download", interactive=False)

    start.click(engine.long_recording, [audio, query, window, hop, alpha, max_new_tokens],
                [summary, timeline, table, raven, csv], api_name="long_recording", concurrency_id=MODEL_JOBS).success(
        _enable, None, [raven, csv], api_visibility="private")


def _classify_tab(settings: Settings, alpha: gr.Slider) -> None:
    with gr.Row():
        with gr.Column(scale=2):
            audio = _audio_input("Recording", "classify-audio", settings)
            labels = gr.Textbox(label="Your labels (one per line, or separated by commas)", lines=6,
                                elem_id="classify-labels",
                                placeholder="American Robin\nGreen Treefrog\nGray Wolf\nNone")
            with gr.Accordion("Question", open=False):
                query = gr.Textbox(engine.DEFAULT_QUERY, label="Question the labels answer", elem_id="classify-query")
            start = gr.Button("Score my labels", variant="primary", elem_id="classify-run")
            if examples := example_recordings(settings):
                gr.Examples([[e] for e in examples], inputs=[audio], label="Example recordings")
        with gr.Column(scale=3):
            summary = gr.Markdown(label="Summary", elem_id="classify-summary")
            bars = gr.BarPlot(x="label", y="probability", y_lim=[0, 1], sort="-y", label="Probability of each label",
                              elem_id="label-bars", height=320)
            per_window = gr.Dataframe(label="Best label per 10-s window", elem_id="classify-table",
                                      interactive=False)
            download = gr.DownloadButton("CSV with every probability", elem_id="classify-download",
                                         interactive=False)

    start.click(engine.classify, [audio, labels, query, alpha], [bars, summary, per_window, download],
                api_name="classify", concurrency_id=MODEL_JOBS).success(
        lambda: _enable()[0], None, [download], api_visibility="private")


def build_demo(settings: Settings = SETTINGS) -> gr.Blocks:
    """The whole Space, its queue configured (bounded concurrency and length)."""
    with gr.Blocks(title="NatureLM-audio") as demo:
        gr.Markdown(HEADER)
        if settings.smoke:
            gr.Markdown(SMOKE_WARNING, elem_id="smoke-warning")
        with gr.Accordion("Model settings", open=False):
            with gr.Row():
                alpha = gr.Slider(0.0, 1.0, value=engine.default_alpha(settings), step=0.05, label="LoRA merging α",
                                  elem_id="alpha",
                                  info="Scales the fine-tuned LoRA update; below 1 trades some in-domain accuracy "
                                       "for better zero-shot generalisation.")
                # the other decoding settings (2 beams, no sampling) come from the checkpoint's generation config
                max_new_tokens = gr.Slider(1, 300, value=engine.default_max_new_tokens(settings), step=1,
                                           label="Longest answer (tokens)", elem_id="max-new-tokens")
        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                _chat_tab(settings, alpha, max_new_tokens)
            with gr.Tab("Long recording", id="long"):
                _long_recording_tab(settings, alpha, max_new_tokens)
            with gr.Tab("Classify with my labels", id="classify"):
                _classify_tab(settings, alpha)
        gr.Markdown(
            f"Uploads up to {settings.max_file_mb:g} MB and {settings.max_seconds:g} s; a long-recording run covers "
            f"at most {settings.max_windows} windows. Requests wait in a queue ({settings.concurrency} at a time, "
            f"{settings.queue_size} waiting at most). Model: `{settings.model}`. For folders of recordings of any "
            "length, use `naturelm infer` on your own machine.",
            elem_id="limits",
        )
    demo.queue(default_concurrency_limit=settings.concurrency, max_size=settings.queue_size)
    return demo


demo = build_demo()

if engine.ON_ZERO_GPU:  # ZeroGPU runs GPU jobs in forked workers: the model must be in place before they fork
    engine.MODEL.get()

__all__ = ["MODEL_JOBS", "build_demo", "demo", "example_recordings"]

if __name__ == "__main__":
    demo.launch(max_file_size=int(SETTINGS.max_file_mb * 2**20),
                theme=gr.themes.Soft(primary_hue="emerald", secondary_hue="amber"))
