// The page's only script: "select all" on the runs list, and the job page's progress (polls /job/status).
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const all = document.getElementById("select-all");
  if (all) all.addEventListener("change", () => {
    document.querySelectorAll('#runs-table input[name="run"]').forEach((box) => { box.checked = all.checked; });
  });
  const job = document.getElementById("job");
  if (!job) return;
  const id = job.dataset.job;
  const show = (s) => {
    job.dataset.status = s.status;
    document.getElementById("job-status").textContent = s.status;
    document.getElementById("job-message").textContent =
      s.status === "queued" && s.ahead ? s.ahead + " job(s) ahead" : (s.message || "");
    const bar = document.getElementById("job-progress");
    bar.max = s.total; bar.value = s.done;
    document.getElementById("job-steps").textContent = s.done + " / " + s.total;
    document.getElementById("cancel").disabled = !(s.status === "queued" || s.status === "running");
    const box = document.getElementById("job-images");
    if (box.children.length !== s.images.length) {
      box.replaceChildren(...s.images.map((src, k) => {
        const img = document.createElement("img");
        img.src = src; img.alt = "generated image " + k;
        return img;
      }));
    }
  };
  const poll = async () => {
    try {
      const r = await fetch("/job/status?id=" + encodeURIComponent(id), {headers: {Accept: "application/json"}});
      if (r.ok) show(await r.json());
    } catch (e) { /* the server restarted or is busy: try again */ }
    if (job.dataset.status === "queued" || job.dataset.status === "running") setTimeout(poll, 400);
  };
  if (job.dataset.status === "queued" || job.dataset.status === "running") poll();
});
