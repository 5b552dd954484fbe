"""Stage: videos and audio -> per-clip features (MediaPipe blendshapes + head pose, log-mel audio)."""
