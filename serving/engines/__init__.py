"""Engine supervision: what `loraplane serve` runs beside the gateway to start and watch local vLLM
engines (process.py), end them when serve dies (reaper.py), and decide at start whether this
machine can serve a base at all (capabilities.py). The gateway reaches engines only over HTTP
(serving/gateway/pool.py); from here it reads only the engine key's name and headers.
"""
