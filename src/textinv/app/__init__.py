"""The local web page (`python -m textinv app`): browse the runs under a folder, compare them, and generate with
what they learned. Modules, one job each:

    server.py     the FastAPI app factory: static files, error pages, the routers below
    rendering.py  templates/ and render(): what the server and every page share
    main.py       the command: argument parsing, the loopback default, uvicorn
    safety.py     paths confined to the runs folder, the CSRF token, form-value parsing
    runs_index.py every run under the folder (status, header, cost, final metrics), read tolerantly
    runs_pages.py the runs list, Table 1, the trade-off plot and sweep curves (textinv.runs.report/sweep_report)
    run_page.py   one run: images per prompt and step, curves, embedding norms, files and prompt syntax
    plots.py      PNGs drawn with matplotlib, in memory
    generation.py the one function that turns form settings into images (textinv.models.generation)
    jobs.py       the generation queue: one worker per model, progress, cancel
    generate_page.py the generate form and the job endpoints
    rating_page.py the blind rating pages of a study (--study; textinv.ratings holds the study, store and statistics)

Later features add a router in their own module and register it in server.py.
"""
