"""A deployer script written for DCP's Python SDK (`pip install dcp`), moved to Tessera by
changing one line: `import dcp` became `import tessera as dcp`. Everything else — `dcp.init()`,
`dcp.compute_for(data, work_function, args)`, `job.env`, `job.modules`, `job.on(...)`,
`job.exec()`, `job.wait()` — is DCP's API.

    TESSERA_SCHEDULER=http://127.0.0.1:8080 python3 examples/dcp-migration/main.py
"""
import tessera as dcp  # was: import dcp

dcp.init()


def work_function(datum, exponent):
    import os

    import dcp  # inside the sandbox: the worktime module (progress, set_slice_handler)
    import numpy as np

    dcp.progress()
    print(f"slice for {datum}")
    return {"datum": datum, "power": int(np.power(datum, exponent)), "unit": os.environ["UNIT"]}


job = dcp.compute_for(range(1, 6), work_function, [3])
job.env = {"UNIT": "cubes"}
job.modules = ["numpy"]
job.on("result", lambda event: print(f"result of slice {event.sliceNumber}: {event.result}"))
job.on("console", lambda line: print(f"console: {line.text}"))
job.exec()
results = job.wait()
print("results:", [result["power"] for result in results])
