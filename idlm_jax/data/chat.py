"""Chat prompts for instruction-tuned diffusion LLMs and GSM8K-style exact-answer scoring.

LLaDA-8B-Instruct (GSAI-ML/LLaDA-8B-Instruct, `tokenizer_config.json`) renders a conversation
with this Jinja `chat_template` (bos_token = "<|startoftext|>"):

  for each message m (index i):  [bos_token if i == 0]
      "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" + trim(m.content) + "<|eot_id|>"
  then, always:  "<|start_header_id|>assistant<|end_header_id|>\n\n"

`render_llada` is that template in Python (tests/data/test_chat.py renders the official
template string with jinja2 and compares). Its special tokens and their ids in the 8B
tokenizer: <|startoftext|> 126080 (BOS), <|endoftext|> 126081 (EOS = PAD), <|mdm_mask|> 126336
(the [MASK] of the diffusion model), <|start_header_id|> 126346, <|end_header_id|> 126347,
<|eot_id|> 126348. The instruct model ends an answer with <|eot_id|> and fills the rest of the
canvas with <|endoftext|>, so a response is its tokens before the first of the two
(`response_end`). `llada_tokenizer` loads a folder's `tokenizer.json` and finds these tokens
by name (the ids are never hard-coded, so a small fixture with the same names works too).

Scoring (GSM8K, Cobbe et al. 2021): the gold answer is the number after "####" in the
`answer` field; the prediction is the LAST number in the response (lm-eval's
"flexible-extract"); they match when equal as decimals after removing "," and "$"
("1,000" = "1000" = "1000.00").
"""

from __future__ import annotations

import dataclasses
import decimal
import json
import pathlib
import re
from typing import Sequence

import numpy as np
import tokenizers as hf_tokenizers

from idlm_jax.data.tokenizers import Tokenizer, TokenizerFileError, from_tokenizer_json

TEMPLATES = ("llada", "none")
LLADA_BOS = "<|startoftext|>"
LLADA_EOS = "<|endoftext|>"
LLADA_EOT = "<|eot_id|>"
LLADA_MASK = "<|mdm_mask|>"
LLADA_HEADER = ("<|start_header_id|>", "<|end_header_id|>")
LLADA_SPECIALS = (LLADA_BOS, LLADA_EOS, LLADA_MASK, *LLADA_HEADER, LLADA_EOT)
ANSWER_MARK = "####"
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


# ---------------------------------------------------------------------------- templates


def render_llada(messages: Sequence[dict], bos_token: str = LLADA_BOS) -> str:
  """LLaDA-8B-Instruct's chat template (module docstring) of [{"role", "content"}, ...]."""
  start, end = LLADA_HEADER
  parts = []
  for i, m in enumerate(messages):
    parts.append((bos_token if i == 0 else "") + f"{start}{m['role']}{end}\n\n"
                 + str(m["content"]).strip() + LLADA_EOT)
  return "".join(parts) + f"{start}assistant{end}\n\n"


def prompt_text(question: str, template: str, *, system: str = "",
                user_template: str = "{question}") -> str:
  """The text the model sees for one question: `user_template` filled in, as the user turn
  of `template` ("llada": the chat template after an optional system turn; "none": as is)."""
  if template not in TEMPLATES:
    raise ValueError(f"chat template must be one of {TEMPLATES}, got {template!r}")
  user = user_template.format(question=question)
  if template == "none":
    return user
  messages = ([{"role": "system", "content": system}] if system else [])
  return render_llada(messages + [{"role": "user", "content": user}])


# ---------------------------------------------------------------------------- tokenizer


@dataclasses.dataclass(frozen=True)
class ChatTokenizer:
  """A tokenizer plus the ids of the chat's stop tokens (a response ends before either)."""
  tokenizer: Tokenizer
  stop_ids: tuple

  def encode(self, text: str) -> list[int]:
    """Ids of a rendered prompt; special tokens written in the text become their ids."""
    return self.tokenizer.encode(text)

  def response_text(self, ids: Sequence[int]) -> str:
    """The text of a generated response: tokens before the first stop id, specials dropped."""
    ids = list(ids)[:response_end(ids, self.stop_ids)]
    return self.tokenizer.decode(ids, skip_special_tokens=True)


def response_end(ids: Sequence[int], stop_ids: Sequence[int]) -> int:
  """Index of the first stop id in `ids` (len(ids) when none): the response's length."""
  ids = np.asarray(ids)
  hit = np.flatnonzero(np.isin(ids, np.asarray(stop_ids)))
  return int(hit[0]) if hit.size else int(ids.shape[-1])


def llada_tokenizer(path) -> ChatTokenizer:
  """The LLaDA tokenizer of a folder's tokenizer.json (or the file): BOS <|startoftext|>,
  EOS = PAD <|endoftext|>, MASK <|mdm_mask|>, stops <|eot_id|> and <|endoftext|>. A missing
  special token is a TokenizerFileError naming it."""
  path = pathlib.Path(path).expanduser()
  if path.is_dir():
    path = path / "tokenizer.json"
  base = from_tokenizer_json(path)
  ids = {name: base.backend.token_to_id(name) for name in LLADA_SPECIALS}
  missing = [name for name, i in ids.items() if i is None]
  if missing:
    raise TokenizerFileError(f"{path} is not a LLaDA tokenizer: no {', '.join(missing)}")
  tok = Tokenizer(str(path), base.backend, vocab_size=base.vocab_size, bos_id=ids[LLADA_BOS],
                  eos_id=ids[LLADA_EOS], pad_id=ids[LLADA_EOS], mask_id=ids[LLADA_MASK],
                  model_vocab_size=base.vocab_size)
  return ChatTokenizer(tok, (ids[LLADA_EOT], ids[LLADA_EOS]))


def char_tokenizer_json(specials: Sequence[str] = LLADA_SPECIALS) -> str:
  """A character-level tokenizer.json: the printable ASCII characters and "\\n", then
  `specials` as added special tokens. The tokenizer of the tiny LLaDA-layout smoke model
  (a real checkpoint brings its own tokenizer.json)."""
  chars = [chr(c) for c in range(32, 127)] + ["\n"]
  vocab = {c: i for i, c in enumerate(chars)}
  vocab["[UNK]"] = len(vocab)
  model = hf_tokenizers.models.WordLevel(vocab, unk_token="[UNK]")
  tok = hf_tokenizers.Tokenizer(model)
  tok.pre_tokenizer = hf_tokenizers.pre_tokenizers.Split(
      hf_tokenizers.Regex(r"[\s\S]"), behavior="isolated")
  tok.decoder = hf_tokenizers.decoders.Fuse()
  tok.add_special_tokens(list(specials))
  return tok.to_str()


# ---------------------------------------------------------------------------- problems


@dataclasses.dataclass(frozen=True)
class Problem:
  question: str
  answer: str  # the gold final number as written after "####"


def gold_number(answer: str) -> str:
  """The gold final answer of a GSM8K `answer` field: the text after the last "####"
  (the whole field when there is none), stripped."""
  return answer.rsplit(ANSWER_MARK, 1)[-1].strip()


def read_problems(path, *, question_key: str = "question", answer_key: str = "answer",
                  limit: int = 0) -> list[Problem]:
  """Problems of a JSONL file with one {"question": ..., "answer": "... #### 42"} per line
  (GSM8K's format). A bad line is a ValueError naming the file and line."""
  path = pathlib.Path(path).expanduser()
  if not path.is_file():
    raise FileNotFoundError(f"prompts file not found: {path}")
  out = []
  for n, line in enumerate(path.read_text().splitlines(), 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
      out.append(Problem(str(row[question_key]), gold_number(str(row[answer_key]))))
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(f"{path}:{n}: expected a JSON object with {question_key!r} and "
                       f"{answer_key!r} ({type(e).__name__}: {e})") from None
    if limit and len(out) == limit:
      break
  if not out:
    raise ValueError(f"{path}: no problems")
  return out


def last_number(text: str) -> str | None:
  """The last number written in `text` ("-1,234.5", "$18"), or None."""
  found = _NUMBER.findall(text)
  return found[-1] if found else None


def _decimal(s: str | None):
  if s is None:
    return None
  s = s.replace(",", "").replace("$", "").strip().rstrip(".")
  try:
    return decimal.Decimal(s)
  except decimal.InvalidOperation:
    return None


def same_number(prediction: str | None, gold: str) -> bool:
  """Whether two written numbers are equal as decimals ("," and "$" ignored)."""
  p, g = _decimal(prediction), _decimal(gold)
  return p is not None and g is not None and p == g
