"""The main job and its inputs: the demo preset (demo.yaml) and the bundled corpus, inside the package."""
