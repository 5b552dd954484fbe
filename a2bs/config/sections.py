"""The single home of a2bs defaults: one frozen dataclass per section (loading: a2bs.config.loading).

A config file holds only overrides, nested by section::

    audio:
      n_mels: 80
    sequence:
      sequence_ms: 10000

Command-line overrides use dotted keys (``sequence.sequence_ms=10000``). Any unknown section or key
is an error, so a typo never silently falls back to a default.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class ConfigError(ValueError):
    """A configuration problem the user can fix (bad key, bad value, missing file)."""


@dataclass(frozen=True)
class VideoConfig:
    """Face extraction from video frames."""

    fps_limit: float = 30.0  # frame_interval = max(1, int(original_fps / fps_limit))
    model_path: str = ""  # "" = the vendored a2bs/assets/face_landmarker.task
    # Expected sha256 of the model file ("" = do not check; set it for your own model file).
    model_sha256: str = "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"
    min_face_detection_confidence: float = 0.5
    min_face_presence_confidence: float = 0.5
    min_tracking_confidence: float = 0.5
    # Frames whose longer side is larger are scaled down inside the decoder's colour conversion (0 = never).
    # MediaPipe's own inputs are 192-256 px; on 1080p footage 640 keeps labels within the noise of full
    # size and makes decoding cheaper (benchmarks/README.md, issue 13). Smaller clips are untouched.
    max_frame_side: int = 640


@dataclass(frozen=True)
class ExtractConfig:
    """How inputs are cut into units of work (a2bs.extract.store.plan_segments)."""

    # Each input is cut into segments of this length, one task each on the actor pool, so a long take
    # uses as many workers as a folder of clips (0 = one task per file).
    segment_s: float = 60.0
    # A segment after the first decodes and tracks this much video before its start and discards it, so
    # the face tracker has settled by the first frame it keeps (docs/scaling.md).
    warmup_s: float = 1.0
    # Audio decoded on each side of a segment, so its log-mel, RMS, ZCR and VAD frames equal the
    # whole-file values (the resampler and the centred STFT window reach past the border).
    audio_margin_s: float = 1.0


@dataclass(frozen=True)
class AudioConfig:
    """Audio decoding and 100 Hz features."""

    sample_rate: int = 16000
    n_mels: int = 80
    n_fft: int = 512
    win_length: int = 400  # 25 ms at 16 kHz
    hop_length: int = 160  # 10 ms at 16 kHz -> 100 Hz frames
    fmin_hz: float = 0.0
    fmax_hz: float = 8000.0
    # power_to_db reference: a fixed 1.0 (not the clip max) so loudness differences survive.
    db_ref: float = 1.0
    db_amin: float = 1e-10
    # Voice activity: RMS level (dBFS) mapped through a soft ramp to [0, 1].
    vad_threshold_db: float = -45.0
    vad_ramp_db: float = 6.0


@dataclass(frozen=True)
class MelNormConfig:
    """Speaker/channel normalisation of the log-mel (a2bs.extract.audio.MelNormaliser), per clip and causal.

    Each frame has the clip's running mean log-mel so far subtracted (a cumulative mean over the frames at
    or above ``speech_floor_db`` that starts from the training set's mean over such frames,
    ``prior_frames`` frames strong) and that training mean added back,
    which removes a voice's and a channel's fixed spectral tilt. Applied where a clip's features
    become windows (build) and in every inference front end, from the card.
    """

    # A build setting (the shards and then the model card carry it). Off by default: on the 15-voice demo
    # corpus split by speaker it chose better on the val voices over 3 seeds only with the slow prior
    # below, and its evidence is that one synthetic corpus (benchmarks/README.md, "Unseen voices and
    # identities", the `mel_norm` variants).
    enabled: bool = False
    # Weight of the training mean in frames (400 = 4 s at 100 Hz). 400 rather than 100: the demo clips
    # open with ~0.9 s of silence, which drags a fast running mean ~20 dB down for the first seconds;
    # 400 chose better on val on 3 of 3 seeds (val_objective 0.944 vs 0.965 without), 100 did not (0.965).
    prior_frames: float = 400.0
    # Frames whose mean log-mel (dB, over the bands) is below this do not move the running mean (nor the
    # prior): silence would otherwise pull it down by a time-varying offset set by each clip's pauses (the
    # demo clips open with ~0.9 s at ~-74 dB; speech is ~-33 dB). -55 sits in the trough between the two
    # modes of the demo corpus's frames (-80..-70 and -40..-25 dB) and removes that offset, but did not
    # choose better on val (val_objective 0.956 vs 0.944 counting every frame, worse on 3 of 3 seeds;
    # benchmarks/README.md, `augment mel_norm speech k400`), so the default stays -80, the dB floor of
    # MEL_DB_RANGE: every frame counts.
    speech_floor_db: float = -80.0


@dataclass(frozen=True)
class SequenceConfig:
    """Windowing clip features into training sequences and splitting them."""

    sequence_ms: int = 240
    overlap_ms: int = 120
    min_face_ratio: float = 0.5  # keep a window only if >= this share of frames saw a face
    # Splits (a2bs.build.shards.assign_splits): val chooses (best epoch, Tune and its early stopping), test is
    # only reported. Shares of the speakers (or clips with split_by=clip), at least one each when there
    # are enough keys; val is drawn first, so test_fraction=0 gives the same val as with a test split.
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    split_by: str = "speaker"  # "speaker" or "clip": never by window (overlap would leak)
    split_seed: int = 0
    # split_by=speaker: these speakers are the test split (instead of test_fraction), e.g. the actors a
    # studio keeps back, or one fold of benchmarks/bench_loso.py; val is drawn from the others.
    test_speakers: tuple[str, ...] = ()
    # split_by=speaker: these speakers are the val split (instead of val_fraction), e.g. to keep a
    # benchmark's val voices fixed when training voices are added (the hash ranks would draw others).
    val_speakers: tuple[str, ...] = ()
    # split_by=speaker only: this share of each training speaker's clips is held out as the `known`
    # split (known voices, unseen clips): reported by `a2bs evaluate`, never chosen on.
    known_clip_fraction: float = 0.0
    # Build shards from these speakers' clips only (empty: every clip of the folder), e.g. fewer actors for an
    # ablation or a quick run without extracting again.
    speakers: tuple[str, ...] = ()
    # Whose face each clip shows (a2bs.build.shards.clip_identity), the shards' `identity` column:
    # "speaker" = the speaker folder (one face per voice), "prefix" = the speaker id up to its first "_"
    # (folders `<face>_<voice>`: several voices on one rig, as in the demo), "" = none (no identity
    # conditioning). Off by default: a speaker folder does not say whether two folders share a rig.
    identity_from: str = ""
    rows_per_shard: int = 4096


@dataclass(frozen=True)
class ModelConfig:
    """Model family member and its hyper-parameters (stored in every checkpoint)."""

    name: str = "tcn_poc"  # a builder in a2bs.models.registry
    n_mels: int = 80
    channels: int = 128
    kernel_size: int = 3
    dilations: tuple[int, ...] = (1, 2, 4, 8)
    # The PoC underfits its 240 ms windows (train loss ~ validation loss): dropout only cost it accuracy
    # (demo, side by side: lip r 0.61 -> 0.70, mouth MAE 0.037 -> 0.031; benchmarks/README.md).
    # tcn_full and tcn_attn keep 0.1 in their presets (a2bs.models.registry).
    dropout: float = 0.0
    causal: bool = False
    separable: bool = False  # depthwise-separable convolutions
    pose_scale: float = 0.2  # pose head: tanh x pose_scale
    attn_heads: int = 4
    attn_layers: int = 1
    attn_causal: bool = True
    attn_max_len: int = 4096  # attention window in frames (also bounds the streaming key/value cache)
    # Ordered identity (face) names the model is conditioned on (a2bs.models.identity); () = none, and
    # then the model has no identity weights at all.
    identities: tuple[str, ...] = ()
    # With identities: True = each face has a FiLM of every block (it changes the dynamics) and an output
    # bias; False = the output bias only (rest shape and pose; the dynamics shared by every face). On the
    # 15-voice corpus val chose FiLM at every seed (mouth MAE with the face 0.042 vs 0.047; benchmarks/README.md
    # "Unseen voices and identities").
    identity_film: bool = True


@dataclass(frozen=True)
class LossConfig:
    """Multi-component loss weights and the staged introduction schedule (epochs, 0-based)."""

    base_weight: float = 1.0
    smooth_l1_beta: float = 0.1
    temporal_weight: float = 0.5
    temporal_start_epoch: int = 2
    silence_weight: float = 0.1
    silence_start_epoch: int = 2
    pose_weight: float = 0.1
    pose_start_epoch: int = 4
    pose_limit: float = 0.2
    silence_vad_threshold: float = 0.5  # frames with vad below this count as silence
    pose_loss_scale: float = 1.0  # weight of the pose channels inside the base loss


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and Ray Train scaling."""

    epochs: int = 50
    batch_size: int = 64
    # Windows per forward pass when scoring (training validation uses at least `batch_size`; also
    # `a2bs evaluate`): larger than training batches since no gradients are kept.
    val_batch_size: int = 256
    lr: float = 3e-3  # OneCycleLR peak
    weight_decay: float = 1e-2
    grad_clip_norm: float = 1.0
    num_workers: int = 1
    use_gpu: bool = False
    device: str = "auto"  # "auto", "cpu", "cuda"
    mixed_precision: bool = True  # used only on CUDA
    seed: int = 0
    best_metric: str = "val_loss"
    best_mode: str = "min"
    max_failures: int = 2
    checkpoints_to_keep: int = 2
    torch_threads: int = 0  # 0 = leave torch's default
    # Ray Train workers: `batch_size` is per worker; each worker reserves this many CPUs.
    cpus_per_worker: float = 1.0
    shuffle_buffer_rows: int = 2048  # local shuffle buffer of each worker's data stream (rows)
    # A split whose shard files total at most this many MB is read once into Ray's object store
    # (spilled to disk if needed) instead of being re-read every epoch; larger splits stream (0 = always stream).
    cache_max_mb: float = 1024.0
    # Start the output head at the train split's channel means (sigmoid/tanh inverse of the means) so the
    # first steps do not spend the network's capacity shifting every output from 0.5 to ~0.05.
    init_output_bias: bool = True
    max_epochs_per_run: int = 0  # stop this invocation after N epochs (0 = run to `epochs`); --resume continues
    # Models with identities: share of train windows shown as the average identity instead of their own
    # (a2bs.models.identity.drop_identities), so the average row learns the mean face.
    identity_dropout: float = 0.2


@dataclass(frozen=True)
class AugmentConfig:
    """On-the-fly augmentation of training batches (a2bs.train.augment); val and test are never augmented.

    Training sees log-mel windows, not waveforms, so every transform works on the mel (dB / power)
    axes. Each one is drawn per window with its own probability (times `strength`); the defaults
    aim at voices the model has not heard: other loudness, channels, speaking rates and vocal tracts.
    """

    # Off by default, on in the demo preset: on the 15-voice demo corpus split by speaker it chose better on
    # the val voices over 3 seeds and overfits the training voices less (benchmarks/README.md, "Unseen
    # voices and identities"); on the 4-voice corpus split by clip it cost lip r (section "Augmentation").
    # Whether it pays depends on how many voices the footage has. `augment.enabled=true` turns it on.
    enabled: bool = False
    strength: float = 1.0  # multiplies every probability below (capped at 1); Tune searches it
    # Moderate: tcn_poc underfits its windows, and a first, stronger set (noise 0.3 from 10 dB, speed 0.5,
    # time masks 0.2, two frequency masks at 0.5) cost known voices lip r 0.47 vs 0.56 unaugmented at
    # epoch 20 of the demo; these defaults 0.52 (benchmarks/README.md, "Augmentation": one seed, partial).
    gain_prob: float = 0.5
    gain_db: float = 6.0  # uniform in [-gain_db, +gain_db]; frames at the dB floor stay there
    noise_prob: float = 0.2
    noise_snr_min_db: float = 15.0  # SNR uniform in [min, max] (window mean powers)
    noise_snr_max_db: float = 30.0
    noise_kinds: tuple[str, ...] = ("white", "pink", "babble")  # one drawn per window
    babble_windows: int = 3  # other windows of the batch summed into one babble
    speed_prob: float = 0.3
    speed_range: float = 0.1  # speed factor uniform in [1 - range, 1 + range]; targets follow
    vtlp_prob: float = 0.5
    vtlp_range: float = 0.1  # vocal-tract-length warp factor uniform in [1 - range, 1 + range]
    vtlp_boundary_hz: float = 4800.0  # the warp is linear below this and bends to fmax_hz above (Jaitly & Hinton)
    time_mask_prob: float = 0.1
    time_masks: int = 1
    time_mask_frames: int = 2  # each mask 1..N frames wide
    freq_mask_prob: float = 0.3
    freq_masks: int = 1
    freq_mask_bins: int = 8  # each mask 1..N mel bands wide


FINETUNE_MODES = ("identity", "head", "all")  # finetune.train: what a fine-tuning run learns


@dataclass(frozen=True)
class FinetuneConfig:
    """`a2bs finetune`: a new identity learned on a trained model (a2bs.train.finetune).

    ``train`` says what learns (one of FINETUNE_MODES): ``identity`` = the new identity's rows only, the
    rest frozen (every other face bit-identical); ``head`` = also the output head; ``all`` = also the
    backbone (at ``backbone_lr``). With ``head`` and ``all`` the other faces' outputs change too, much
    for the worse (they learn from the new actor only): keep the base model for them.
    """

    # One identity row is a few thousand numbers: a larger step than training's, and a few minutes
    # of footage (a few hundred windows) make an epoch of a few steps. The epoch kept is chosen on
    # held-out windows (val_fraction), so more epochs cost only time: at 20 the held-out loss was still
    # falling (epoch 18-20 kept at 3 seeds), at 60 it kept 57-60 and lip r rose ~0.04; 2 minutes of
    # footage take ~1.5-3 s an epoch at one thread (benchmarks/README.md, "Adaptation").
    epochs: int = 60
    lr: float = 1e-2
    batch_size: int = 32
    seed: int = 0
    # Clips of a new actor's clips folder held out (split by clip) to choose the epoch kept: a few
    # minutes are ~15-20 clips, so a fifth (3-4 clips, ~25 s) tells a still-improving epoch from an
    # over-fitted one and leaves ~4/5 to learn from. 0 (or a single clip: train keeps it) = no choice,
    # the last epoch is kept. A shards folder given instead keeps its own split: its val windows
    # choose, the others train.
    val_fraction: float = 0.2
    train: str = "identity"
    # The backbone's step in ``train: all`` (the identity row and the head keep ``lr``): it starts
    # from weights already fitted to other voices. Picked on the held-out windows of 2 minutes of a
    # new actor (seed 0, 60 epochs): best val loss 0.0098 at 3e-4, 0.0093 at 1e-3, 0.0088 at 3e-3,
    # 0.0090 at 1e-2 (benchmarks/README.md, "Adaptation").
    backbone_lr: float = 3e-3


@dataclass(frozen=True)
class TuneConfig:
    """Ray Tune search."""

    space: str = "small"
    num_samples: int = 8
    max_epochs: int = 10
    grace_period: int = 2
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int = 0  # 0 = as many as resources allow
    # 0 = each trial runs the training loop in its own process (one worker, no Ray Train start-up);
    # N >= 1 = each trial launches a TorchTrainer with N workers of `cpus_per_trial` / `gpus_per_trial`.
    workers_per_trial: int = 0
    # ASHA compares trials on this: the base (smooth L1) validation loss does not depend on the loss
    # weights being searched, so trials stay comparable.
    metric: str = "val_base_loss"
    reduction_factor: int = 2
    seed: int = 0


@dataclass(frozen=True)
class RayConfig:
    """Where and how wide Ray runs."""

    address: str = ""  # "" = start an embedded local Ray; "auto" or ray://... for a cluster
    num_cpus: int = 0  # embedded Ray only; 0 = all cores
    extract_actors: int = 0  # 0 = one per CPU in the cluster
    cpus_per_actor: float = 1.0


# Name of the model file in a run or checkpoint folder (train writes it; evaluate, infer and the demo
# read it). It lives here, below every stage, so the default model path can use it; stages import it
# from a2bs.models.model_file.
MODEL_FILE_NAME = "model.safetensors"


@dataclass(frozen=True)
class InferConfig:
    """Inference output and post-processing."""

    fps: float = 30.0
    model_path: str = f"out/demo/train/{MODEL_FILE_NAME}"  # what `a2bs infer` uses when no MODEL is given
    format: str = "livelink-csv"  # livelink-csv | json | npz (an .npz archive; "npy" is an alias) | parquet
    smoothing: bool = False  # One-Euro filter (causal: adds no lag in streaming)
    one_euro_min_cutoff_hz: float = 3.0
    one_euro_beta: float = 0.5
    one_euro_d_cutoff_hz: float = 1.0  # cutoff of the filter's own speed estimate
    mouth_gain: float = 1.0  # articulation gain on jaw*/mouth* (then clipped to [0, 1])
    upper_face_gain: float = 1.0  # articulation gain on eye*/brow*/cheek*/nose* (then clipped)
    neutral_calibration: bool = False  # subtract the speaker's rest face measured on silence
    neutral_vad_threshold: float = 0.2  # frames with voice activity below this are silence
    neutral_min_frames: int = 25  # need this many silence frames (0.25 s) before calibrating
    # Live Link eye angles: 0 (off) or derived from eyeLook* shapes, full shape = this many radians.
    eye_angles_from_blendshapes: bool = True
    eye_look_range_rad: float = 0.5
    livelink_subject: str = "a2bs"  # Live Link subject name in Unreal
    livelink_port: int = 11111  # Live Link Face's default UDP port (when --livelink gives only a host)
    stream_chunk_ms: float = 10.0  # audio block size of `a2bs stream` (one 10 ms hop)
    stream_backend: str = "torch"  # "torch" (cached-state step) or "onnx" (exported step graph, ONNX Runtime)
    actors: int = 0  # batch inference actors on Ray (0 = one per CPU)
    max_chunk_frames: int = 30000  # longer inputs run in exact chunks (5 min at 100 Hz) to bound memory
    preview_height: int = 360  # pixel height of each preview panel


@dataclass(frozen=True)
class ServeConfig:
    """`a2bs serve`: the WebSocket service (protocol and policies in docs/serving.md)."""

    host: str = "127.0.0.1"
    port: int = 8765
    max_sessions: int = 64  # admission limit: one more is refused with a clear reason
    # A file holding the access token; required when `host` is not a loopback address.
    token_file: str = ""
    require_token: bool = False  # demand the token on loopback too (it is always demanded elsewhere)
    idle_timeout_s: float = 30.0  # a session that sends nothing for this long gets an error and a close
    max_message_bytes: int = 1048576  # largest WebSocket message accepted (1 MiB: 32 s of 16 kHz s16)
    min_sample_rate: int = 8000  # a client's declared rate must lie in [min, max]
    max_sample_rate: int = 192000
    max_fps: float = 240.0
    # Per session: audio received but not yet taken by a tick beyond this pauses reading from that
    # client (TCP back-pressure), so a fast sender slows down instead of filling memory.
    max_pending_audio_s: float = 2.0
    # Per session: frame messages waiting to be sent beyond this drop the oldest (counted; a live rig
    # wants the newest frames), so a slow reader never holds up the others.
    send_queue_messages: int = 64
    # Kernel send buffer per connection (0 = the OS's, autotuned up to MBs): smaller makes the drop
    # policy start sooner for a slow reader, so the frames it does get are fresher.
    socket_send_buffer_bytes: int = 0
    # Batch policy: each tick steps at most this many pending 10 ms frames per session (a client far
    # ahead of real time cannot stall the others), in calls of at most `max_batch_streams` (0 = all).
    max_step_frames: int = 8
    max_batch_streams: int = 0
    # The step clock: while sessions have work, each worker ticks once per this period and steps every
    # session's pending frames in one batched step (0 = a tick as soon as audio arrives, one per message
    # at light load). 10 ms = one model frame hop: a frame waits at most that long (benchmarks/README.md).
    step_period_ms: float = 10.0
    # Model step: "auto" = ONNX Runtime for convolution models (1.6x cheaper per session-frame than
    # PyTorch batched over 64 sessions, 6x alone; benchmarks/README.md), PyTorch for tcn_attn.
    backend: str = "auto"
    # Weights of the ONNX model step: "fp32" (frames equal `a2bs infer`'s to ~1e-5), or "int8" (matrix
    # products on int8 weights: ~1.8x less step CPU for tcn_full; frames differ from the float model's
    # by ~1e-4 on average, at most ~0.01; benchmarks/README.md, "Serving", measures both).
    precision: str = "fp32"
    step_threads: int = 1  # intra-op threads of the model step (torch / ONNX Runtime)
    late_frame_ms: float = 50.0  # frames whose audio waited longer than this in the server count as late
    # Server processes sharing the port, each with its own event loop and batched step (one process
    # tops out at one core of per-message Python); "auto" = one per CPU this process may use. The
    # admission limit, the session count and /metrics cover all of them (docs/serving.md).
    workers: str = "auto"
    # Each worker's event loop: "auto" = uvloop where it is installed (a dependency on Linux and macOS;
    # its socket and WebSocket I/O costs less CPU per message than asyncio's, benchmarks/README.md),
    # else asyncio's; "asyncio" or "uvloop" to choose.
    event_loop: str = "auto"
    livelink_any_host: bool = False  # Live Link UDP only to the client's own address unless true


@dataclass(frozen=True)
class Config:
    """All sections; the resolved config is saved next to every output."""

    extract: ExtractConfig = field(default_factory=ExtractConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    mel_norm: MelNormConfig = field(default_factory=MelNormConfig)
    sequence: SequenceConfig = field(default_factory=SequenceConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)


# The console (a2bs.runtime.console) is not part of a run's config: it changes what is shown, never
# what is computed, so it is neither a section nor saved with the outputs.
CONSOLE_LINE_INTERVAL_S = 10.0  # outside a terminal: at most one progress line per stage this often
CONSOLE_POLL_S = 1.0  # how often progress kept in files (train's history.json) is read again
