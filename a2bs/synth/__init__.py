"""Demo-corpus generator: public-domain face photos animated by TTS-driven visemes.

``a2bs.synth.corpus.generate_corpus`` writes the clips (needs flite and festival with the voices of
``a2bs.synth.speech``); ``a2bs.synth.verify.verify_corpus`` checks them against MediaPipe's readings.
"""
