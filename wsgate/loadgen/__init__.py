"""The load generator behind `wsgate loadtest`: N connections x M scripted streams, verified.

Drives a wsgate.v1 gateway (or the naive relay, which speaks the same frames) at
`ws://127.0.0.1:PORT/v1/ws`, or with `--direct BASE_URL` reads the mock provider's OpenAI
SSE itself over aiohttp: the floor every gateway is compared with. Loopback only; it stops
by itself after `--duration` seconds (or `--count` streams) plus at most `--drain-s`.

**Load model.** `--connections` WebSockets, opened evenly over `--ramp` seconds, each running
`--streams-per-conn` stream *slots*. A slot runs one stream after another. Every stream's
answer is a mock script in its last user message (`protocol/MOCK.md`): `words` generated
words (from a pool of 64 seeds), one chunk per word, first token after `ttft_ms`, then
`tokens_per_s`. With a rate, a slot's streams follow a fixed schedule (stream j is due at
the slot's start + j x (expected duration + think time)): an open-loop load. With
`--rate 0` (burst) the mock writes as fast as it can and a slot starts its next stream as
soon as the previous one ends. Stream starts are timer callbacks on the event loop's one
timer heap; tokens are paced by the mock's single timer, never by the load tester.

**Coordinated omission.** Latency is measured against when a token *should* have arrived,
never against when the tester happened to ask: a backed-up system cannot hide its delay by
slowing the tester down. TTFT and end-to-end time count from the stream's *scheduled*
start, not its actual send (a start that had to wait for its slot's previous stream, or for
a reconnect, is still measured from its schedule: `late_starts` counts them). Token latency
is `receive time - due time`, where the due time of content chunk k is the mock's own
schedule: `arrival + ttft_ms/1000 + k/tokens_per_s`. The mock's arrival time comes from its
request records (`GET /mock/requests`, matched by each stream's `tag`; `time.monotonic()`
is CLOCK_MONOTONIC, shared by processes on one machine), read once at the end when
`--mock-url` (or `--direct`) names the mock. Without a record, the scheduled start stands
in for the arrival (conservative: it adds the request's way to the mock). The count of each
anchor is reported. The mock releases tokens within 1 ms of their due time, so about a
millisecond of timer jitter is in every figure, the direct floor included: compare targets
by what they add over `--direct`; token latency is therefore signed (a token released a
little early shows as early, not as 0, so the floor is not biased). HDR's own
`record_corrected_value` is not used: the schedule is known exactly, so no interval has to
be guessed. The inter-token gap is the time between the arrivals of consecutive chunks of a
stream (tokens covered by one coalesced frame arrive together: gap 0, then one long gap);
`gap excess` is that gap minus the scheduled 1/rate (signed too). `--warmup S` leaves out
of the latencies every token due in the first S seconds, and the TTFT, end-to-end and
cancel times of streams scheduled then (connection set-up); every stream is still verified.

**Correctness.** Every stream that finished `stop` must carry exactly its script's text
(the concatenation of `delta.text` in `seq` order; coalesced frames cover `first_seq`..`seq`);
a cancelled, dropped or failed stream must carry a prefix of it. `seq` gaps, duplicates,
frames after `finish` and outcomes other than the expected one (a fault script must end
with its error code) are counted. `ok` in the result means none of these happened.

**Unhappy paths** (fractions, combinable): `--cancel` streams cancelled after a random
number of tokens (0 = before the first); `--drop` connections aborted without a close at a
random moment, then reopened; `--slow` connections that stop reading for `--slow-pause-ms`
every `--slow-every-ms` (their latencies are reported apart); `--oversized` starts larger
than the gateway's `max_frame_bytes` (expect `frame_too_large`); `--fault` upstream faults
by script: HTTP 500, HTTP 429, a mid-stream error event, a truncated stream. With
`--direct`, connection drops, slow readers and oversized starts do not apply.

`--options JSON` adds start options to every `start` (e.g. a buffering mode). Output: a
table (default), `--json`, `--html FILE` (HDR percentile plots and throughput over time,
inline SVG). Exit status 0 when every check passed, 1 otherwise, 2 on usage.

**The package's rules.** A client-side tool, like `wsgate.client`: it measures a gateway from
outside, over the wire, so it imports no gateway, upstream or store module and not the
composition root; from the mock it takes only `wsgate.mock.script` (the text and chunks a
script makes the mock send, to check every answer byte for byte). Only `wsgate.cli` imports
it, lazily. `hdrhistogram` (the `loadtest` extra) is needed by `hist` alone, so
`wsgate loadtest --help` and the report rendering work without it. This `__init__` imports
nothing, for the same reason.

Modules: `config` (LoadConfig, the loopback rule), `websocket` (a lean RFC 6455 client),
`plan` (each stream's script and expected answer), `stream` (one stream as received),
`conn` (one WebSocket of the load), `direct` (the mock's SSE read directly), `hist`,
`tally` (verification, latencies, `Result`), `runner` (scheduling; `run`), `charts` and
`report` (text and HTML reports), `command` (the command line).
API: `await wsgate.loadgen.runner.run(LoadConfig(...)) -> Result`;
`wsgate.loadgen.command.main(argv) -> int`.
"""
