"""Tests of idlm_jax.data.tokenizers and of the shipped tokenizer assets."""

import hashlib
import json

import pytest
import tokenizers as hf_tokenizers

from idlm_jax.data import build_assets
from idlm_jax.data.tokenizers import ASSETS_DIR, SHIPPED_TOKENIZERS, get_tokenizer

ROUND_TRIP_TEXT = ("It is a truth universally acknowledged, that a single man in "
                   "possession of a good fortune, must be in want of a wife.  "
                   "Café naïve — 100% “ok”?\n")


def test_bert_ids_and_specials():
  tok = get_tokenizer("bert-base-uncased")
  assert tok.encode("Hello world!", add_special_tokens=True) == [101, 7592, 2088, 999, 102]
  assert tok.encode("Hello world!") == [7592, 2088, 999]
  assert (tok.vocab_size, tok.model_vocab_size) == (30522, 30522)
  assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.mask_id) == (101, 102, 0, 103)


def test_gpt2_ids_and_specials():
  tok = get_tokenizer("gpt2")
  assert tok.encode("Hello world") == [15496, 995]
  assert tok.encode("Hello world", add_special_tokens=True) == [50256, 15496, 995, 50256]
  assert (tok.vocab_size, tok.model_vocab_size) == (50257, 50258)
  assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.mask_id) == (50256, 50256, 50256, 50257)
  # No prefix space: a leading word is not merged with a space (GPT-2 behaviour).
  assert tok.encode(" Hello") == [18435]


def test_demo_tokenizer_has_2048_ids_and_mask():
  tok = get_tokenizer("demo-bpe-2048")
  assert tok.vocab_size == tok.model_vocab_size == 2048
  assert tok.backend.get_vocab_size(with_added_tokens=True) == 2048
  assert tok.backend.token_to_id("[MASK]") == tok.mask_id
  specials = [tok.backend.id_to_token(i) for i in (tok.pad_id, tok.bos_id, tok.eos_id)]
  assert specials == ["[PAD]", "[BOS]", "[EOS]"]
  ids = tok.encode("Hello world", add_special_tokens=True)
  assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and max(ids) < 2048


@pytest.mark.parametrize("name", ["gpt2", "demo-bpe-2048"])
def test_byte_level_decode_round_trip(name):
  tok = get_tokenizer(name)
  assert tok.decode(tok.encode(ROUND_TRIP_TEXT)) == ROUND_TRIP_TEXT
  with_special = tok.encode(ROUND_TRIP_TEXT, add_special_tokens=True)
  assert tok.decode(with_special, skip_special_tokens=True) == ROUND_TRIP_TEXT


def test_bert_decode_round_trip_matches_hf_cleanup():
  tok = get_tokenizer("bert-base-uncased")
  text = "hello world! it's a truth, universally acknowledged."
  ids = tok.encode(text, add_special_tokens=True)
  assert tok.decode(ids, skip_special_tokens=True) == text
  assert tok.decode(ids) == f"[CLS] {text} [SEP]"


def test_mask_id_decodes_as_mask_token():
  gpt2 = get_tokenizer("gpt2")
  assert gpt2.decode([15496, gpt2.mask_id, 995]) == "Hello[MASK] world"
  assert gpt2.decode([15496, gpt2.mask_id, 995], skip_special_tokens=True) == "Hello world"
  demo = get_tokenizer("demo-bpe-2048")
  assert "[MASK]" in demo.decode([demo.mask_id])


@pytest.mark.parametrize("name", SHIPPED_TOKENIZERS)
def test_batch_api_matches_single(name):
  tok = get_tokenizer(name)
  texts = ["Hello world", "", "A second, longer line of text."]
  batch = tok.encode_batch(texts, add_special_tokens=True)
  assert batch == [tok.encode(t, add_special_tokens=True) for t in texts]
  assert tok.decode_batch(batch) == [tok.decode(ids) for ids in batch]


def test_instances_are_cached():
  assert get_tokenizer("gpt2") is get_tokenizer("gpt2")


def test_unknown_tokenizer_error_names_it_and_the_choices():
  with pytest.raises(ValueError, match="no-such-tokenizer") as info:
    get_tokenizer("no-such-tokenizer")
  assert "bert-base-uncased" in str(info.value) and "tokenizer.json" in str(info.value)


def test_missing_vocab_file_error_names_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="encoder.json"):
    get_tokenizer("gpt2", assets_dir=tmp_path)
  with pytest.raises(FileNotFoundError, match="vocab.txt"):
    get_tokenizer("bert-base-uncased", assets_dir=tmp_path)


def test_tokenizer_json_path_and_folder(tmp_path):
  demo = get_tokenizer("demo-bpe-2048")
  demo.backend.save(str(tmp_path / "tokenizer.json"))
  by_file = get_tokenizer(str(tmp_path / "tokenizer.json"))
  by_folder = get_tokenizer(str(tmp_path))
  assert by_file is by_folder
  assert by_file.encode("Hello world") == demo.encode("Hello world")
  assert (by_file.bos_id, by_file.eos_id, by_file.pad_id, by_file.mask_id) == (1, 2, 0, 3)


def test_tokenizer_json_without_mask_appends_one(tmp_path):
  backend = hf_tokenizers.Tokenizer(hf_tokenizers.models.WordLevel(
      {"<s>": 0, "</s>": 1, "a": 2, "b": 3}, unk_token="a"))
  backend.pre_tokenizer = hf_tokenizers.pre_tokenizers.Whitespace()
  backend.save(str(tmp_path / "tok.json"))
  tok = get_tokenizer(str(tmp_path / "tok.json"))
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 1)
  assert (tok.vocab_size, tok.mask_id, tok.model_vocab_size) == (4, 4, 5)
  assert tok.encode("b a", add_special_tokens=True) == [0, 3, 2, 1]


def test_shipped_files_have_the_expected_hashes():
  for _, rel, expected in build_assets.COPIED_FILES:
    assert hashlib.sha256((ASSETS_DIR / rel).read_bytes()).hexdigest() == expected, rel
  assert (ASSETS_DIR / "LICENSES.md").read_text() == build_assets.LICENSES_MD


def test_demo_tokenizer_is_reproduced_by_the_build_script():
  fresh = build_assets.train_demo_tokenizer(ASSETS_DIR / "corpora")
  shipped = json.loads((ASSETS_DIR / build_assets.DEMO_FILE).read_text())
  assert json.loads(fresh.to_str()) == shipped
