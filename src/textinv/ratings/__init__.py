"""Human judgement of runs' images: blind ACR (1-5) and A/B studies with honest statistics (python -m textinv rate).

    study.py     a study from runs: items drawn from evaluation images, hidden references, gold and trap items,
                 questions, per-rater sessions and hashed invite tokens; images re-encoded without metadata
    store.py     the answers in SQLite (WAL): one per (rater, item, question), enforced by the database; CSV
                 export/import to merge studies run on several machines
    stats.py     MOS with its intervals (t over per-rater means, bootstrap over raters and items), z-scores,
                 screening, Krippendorff's alpha, Wilson intervals
    report.py    the report (markdown, JSON, plot) and the MOS column of Table 1
    simulate.py  simulated raters answering through the server's HTTP pages, with known truth
    cli.py       python -m textinv rate new | report | simulate | export | import
The rating pages themselves are the web page's (textinv.app.rating_page).
"""
