"""The contract checks transformers runs for every model, on the tiny NatureLM: tuple outputs, hidden states,
`inputs_embeds` against `input_ids`, SDPA against eager attention, the flags the model declares, and the one count of
audio tokens per clip held against the model's own output."""

import copy

import pytest
import torch

from feature_extraction_naturelm import NatureLMFeatureExtractor
from modeling_naturelm import NatureLMBeatsRelativePositionBias
from naturelm.testing_utils import tiny_model_and_processor
from processing_naturelm import NatureLMProcessor


@pytest.fixture(scope="module")
def tiny(tokenizer_dir):
    return tiny_model_and_processor(tokenizer_dir)


@pytest.fixture(scope="module")
def clips(reference):
    return [clip.numpy() for clip in reference["waveform"]]


def _prompt(processor, query: str) -> str:
    content = [{"type": "audio"}, {"type": "text", "text": query}]
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)


@pytest.fixture(scope="module")
def batch(tiny, clips):
    _, processor = tiny
    return processor(text=[_prompt(processor, "Which species?"), _prompt(processor, "Caption the audio, please.")],
                     audio=[clips[0], clips[-1]], sampling_rate=16000)  # one clip is enough


@pytest.mark.parametrize("window_seconds, stride_seconds, num_query_tokens", [(0.333333, 0.333333, 1), (0.5, 0.25, 2)])
@pytest.mark.parametrize("clip_seconds", [0.7, 1.0, 2.5, 10.0])
def test_audio_token_count_is_the_models_output_length(tokenizer_dir, clips, clip_seconds, window_seconds,
                                                       stride_seconds, num_query_tokens):
    model, made = tiny_model_and_processor(tokenizer_dir, window_seconds=window_seconds,
                                           window_stride_seconds=stride_seconds, num_query_tokens=num_query_tokens)
    processor = NatureLMProcessor(NatureLMFeatureExtractor(max_length_seconds=clip_seconds), made.tokenizer,
                                  **NatureLMProcessor.windowing_from_config(model.config))
    features = processor.feature_extractor(clips[:1], sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        length = model.get_audio_features(features).pooler_output.shape[1]
    assert length == processor.num_audio_tokens > 0
    inputs = processor(text="<AudioHere> Hi", audio=clips[0], sampling_rate=16000)
    assert (inputs["input_ids"] == model.config.audio_token_id).sum() == length
    with torch.no_grad():
        assert model(**inputs).logits.shape[1] == inputs["input_ids"].shape[1]


def test_clips_shorter_than_a_window_are_refused_on_both_sides(tiny, clips):
    model, made = tiny
    short = NatureLMFeatureExtractor(max_length_seconds=0.4)  # 2 x 8 = 16 BEATs patches, a window is 17
    with pytest.raises(ValueError, match="shorter than one Q-Former window"):
        NatureLMProcessor(short, made.tokenizer, **NatureLMProcessor.windowing_from_config(model.config))
    features = short(clips[:1], sampling_rate=16000, return_tensors="pt").input_features
    with pytest.raises(ValueError, match="fewer than the 17"):
        model.get_audio_features(features)


def test_return_dict_false_gives_the_outputs_as_a_tuple(tiny, batch):
    model, _ = tiny
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        as_dict = model(**batch, labels=labels)
        as_tuple = model(**batch, labels=labels, return_dict=False)
        backbone = model.model(**batch, return_dict=False)
        audio = model.get_audio_features(batch["input_features"], return_dict=False)
    assert isinstance(as_tuple, tuple) and isinstance(backbone, tuple) and isinstance(audio, tuple)
    assert len(as_tuple) == len(as_dict.to_tuple())
    assert torch.equal(as_tuple[0], as_dict.loss) and torch.equal(as_tuple[1], as_dict.logits)
    assert torch.equal(backbone[0], model.model(**batch).last_hidden_state)
    assert torch.equal(audio[1], as_dict.audio_hidden_states.view_as(audio[1]))


def test_output_hidden_states(tiny, batch):
    model, _ = tiny
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
        plain = model(**batch)
    assert plain.hidden_states is None
    assert len(out.hidden_states) == model.config.text_config.num_hidden_layers + 1
    assert all(h.shape == (*batch["input_ids"].shape, model.config.text_config.hidden_size) for h in out.hidden_states)
    # the first is the input of the language model: token embeddings with the audio features merged in
    mask = batch["input_ids"] == model.config.audio_token_id
    assert torch.allclose(out.hidden_states[0][mask], out.audio_hidden_states)
    assert torch.equal(out.logits, plain.logits)


def test_inputs_embeds_give_the_logits_of_input_ids(tiny, batch):
    model, processor = tiny
    embed = model.get_input_embeddings()
    with torch.no_grad():
        # text only
        text = processor.tokenizer(["Hello there", "Hi"], padding=True, return_tensors="pt")
        expected = model(input_ids=text["input_ids"], attention_mask=text["attention_mask"]).logits
        got = model(inputs_embeds=embed(text["input_ids"]), attention_mask=text["attention_mask"]).logits
        assert torch.allclose(got, expected, atol=1e-6)
        # an audio prompt, merged by hand ...
        expected = model(**batch).logits
        merged, _ = model.model.get_merged_audio_embeddings(embed(batch["input_ids"]), batch["input_features"],
                                                            batch["input_ids"])
        got = model(inputs_embeds=merged, attention_mask=batch["attention_mask"]).logits
        assert torch.allclose(got, expected, atol=1e-6)
        # ... or by the model, which finds the placeholders by the audio token's embedding
        got = model(inputs_embeds=embed(batch["input_ids"]), input_features=batch["input_features"],
                    attention_mask=batch["attention_mask"]).logits
        assert torch.allclose(got, expected, atol=1e-6)
        with pytest.raises(ValueError, match="exactly one of"):
            model(input_ids=batch["input_ids"], inputs_embeds=embed(batch["input_ids"]))
        with pytest.raises(ValueError, match=r"1 clips were given"):
            model(inputs_embeds=embed(batch["input_ids"]), input_features=batch["input_features"][:1])


def test_sdpa_and_eager_attention_agree(tiny, batch):
    model, _ = tiny
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    assert eager.config.text_config._attn_implementation == "eager"
    assert eager.config.qformer_config._attn_implementation == "eager"
    assert model.config.text_config._attn_implementation == "sdpa"
    keep = batch["attention_mask"].bool()  # padding positions attend to nothing, which the two fill differently
    with torch.no_grad():
        assert torch.allclose(eager(**batch).logits[keep], model(**batch).logits[keep], atol=1e-5)


def test_declared_flags_describe_the_submodules(tiny):
    model, _ = tiny
    language_model = model.model.language_model
    expected = {"NatureLMBeatsEncoderLayer", "Blip2QFormerLayer", *language_model._no_split_modules}
    assert set(model._no_split_modules) == expected
    classes = {type(m).__name__ for m in model.modules()}
    assert expected <= classes  # every name is a module the model really has
    assert not model._supports_flash_attn and not model.model.audio_projector.qformer._supports_flash_attn
    with pytest.raises((ValueError, ImportError)):
        model.set_attn_implementation("flash_attention_2")


def test_relative_position_buckets_are_wavlms(tiny):
    from transformers.models.wavlm.modeling_wavlm import WavLMAttention

    config = tiny[0].config.audio_config
    bias = NatureLMBeatsRelativePositionBias(config)
    wavlm = WavLMAttention(config.encoder_embed_dim, config.encoder_attention_heads, num_buckets=config.num_buckets,
                           max_distance=config.max_distance)
    wavlm.rel_attn_embed.weight.data.copy_(bias.relative_attention_bias.weight.data)
    length = 2 * config.max_distance  # long enough to reach the clamped buckets
    assert torch.equal(bias(length), wavlm.compute_bias(length, length))
