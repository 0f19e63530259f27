"""The status page at `/`: one server-rendered HTML document with a small script.

The script reads `/api/tasks` and `/api/history` every `REFRESH_S` seconds and fills the
tables (text only: no value from the table is ever parsed as HTML); with a token typed
in (kept in the tab's sessionStorage, never in the URL), trigger, pause and resume
buttons POST to the API. Readable on a phone: the tables become one card per row on a
narrow screen. It never knows the store.
"""

from __future__ import annotations

REFRESH_S = 5

_STYLE = """
body{font-family:system-ui,sans-serif;margin:0;padding:1rem;color:#222;background:#fafafa}
h1{font-size:1.3rem;margin:0 0 .5rem}h2{font-size:1.1rem;margin:1.2rem 0 .4rem}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border-bottom:1px solid #ddd;padding:.35rem .5rem;text-align:left;font-size:.9rem;
vertical-align:top}
th{background:#eee}.failed,.timed_out,.abandoned,.quarantined{color:#b00020;font-weight:600}
.success{color:#1b5e20}button{margin:.1rem;padding:.35rem .6rem;font-size:.9rem}
#bar{display:flex;flex-wrap:wrap;gap:.5rem;align-items:center;margin-bottom:.5rem}
#msg{font-size:.9rem;color:#555}
@media (max-width:700px){table,thead,tbody,tr,td{display:block}thead{display:none}
tr{margin-bottom:.6rem;border:1px solid #ddd;background:#fff}
td{border:none;padding:.2rem .5rem}td::before{content:attr(data-label) ": ";font-weight:600}}
"""

_SCRIPT = """
const COLS=[["name","Task"],["status","Status"],["last_run","Last run"],
["next_run","Next run"],["last_outcome","Last outcome"],["avg_duration","Avg. dur. (s)"],
["running","Running"],["status_reason","Reason"]];
const HCOLS=[["task_name","Task"],["started","Started"],["duration_s","Duration (s)"],
["outcome","Outcome"],["error","Error / message"],["worker","Worker"]];
const TOKEN_NEEDED=__TOKEN_NEEDED__;
function token(){return sessionStorage.getItem("cronloop-token")||"";}
function cell(tr,label,text,cls){const td=document.createElement("td");
td.dataset.label=label;td.textContent=text==null?"-":String(text);if(cls)td.className=cls;
tr.appendChild(td);return td;}
function fmt(key,v){if(v==null)return "-";if(key.endsWith("run")||key==="started")
return new Date(v).toLocaleString();if(typeof v==="number")return v.toFixed(3);
if(typeof v==="boolean")return v?"yes":"no";return v;}
async function act(name,action){const r=await fetch("api/tasks/"+encodeURIComponent(name)+
"/"+action,{method:"POST",headers:{"Authorization":"Bearer "+token()}});
const body=await r.json().catch(()=>({}));
document.getElementById("msg").textContent=r.ok?name+": "+action+" done":
name+": "+(body.error||r.status);refresh();}
function renderTasks(tasks){const tb=document.getElementById("tasks");tb.replaceChildren();
for(const t of tasks){const tr=document.createElement("tr");tr.dataset.task=t.name;
for(const [k,l] of COLS){const cls=(k==="last_outcome"||k==="status")?String(t[k]):"";
cell(tr,l,fmt(k,t[k]),cls);}
if(TOKEN_NEEDED&&token()){const td=cell(tr,"Actions","");td.textContent="";
for(const a of ["trigger","pause","resume"]){const b=document.createElement("button");
b.textContent=a;b.dataset.action=a;b.onclick=()=>act(t.name,a);td.appendChild(b);}}
tb.appendChild(tr);}}
function renderHistory(runs){const tb=document.getElementById("history");tb.replaceChildren();
for(const r of runs){const tr=document.createElement("tr");
for(const [k,l] of HCOLS){const v=k==="error"?(r.error||r.message):r[k];
cell(tr,l,fmt(k,v),k==="outcome"?r.outcome:"");}tb.appendChild(tr);}}
async function refresh(){try{const [t,h]=await Promise.all([fetch("api/tasks"),
fetch("api/history?limit=30")]);if(!t.ok||!h.ok)throw new Error("HTTP "+t.status);
renderTasks(await t.json());renderHistory(await h.json());
document.getElementById("updated").textContent="updated "+new Date().toLocaleTimeString();
}catch(e){document.getElementById("updated").textContent="cannot refresh: "+e.message;}}
function setup(){const form=document.getElementById("tokenform");
if(!TOKEN_NEEDED){form.hidden=true;}
form.onsubmit=(ev)=>{ev.preventDefault();sessionStorage.setItem("cronloop-token",
document.getElementById("token").value);document.getElementById("token").value="";refresh();};
document.getElementById("actions-head").hidden=!TOKEN_NEEDED;
refresh();setInterval(refresh,__REFRESH_MS__);}
document.addEventListener("DOMContentLoaded",setup);
"""

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>cronloop</title><style>__STYLE__</style></head>
<body><h1>cronloop</h1>
<div id="bar"><span id="updated">loading…</span>
<form id="tokenform"><input id="token" type="password" autocomplete="off"
placeholder="API token" aria-label="API token"> <button type="submit">use token</button></form>
<span id="msg"></span></div>
<h2>Tasks</h2>
<table><thead><tr><th>Task</th><th>Status</th><th>Last run</th><th>Next run</th>
<th>Last outcome</th><th>Avg. dur. (s)</th><th>Running</th><th>Reason</th>
<th id="actions-head">Actions</th></tr></thead><tbody id="tasks"></tbody></table>
<h2>Recent runs</h2>
<table><thead><tr><th>Task</th><th>Started</th><th>Duration (s)</th><th>Outcome</th>
<th>Error / message</th><th>Worker</th></tr></thead><tbody id="history"></tbody></table>
<script>__SCRIPT__</script></body></html>
"""


def render_page(*, token_needed: bool) -> str:
    """The page; `token_needed` shows the token field and the buttons (the API has one)."""
    script = _SCRIPT.replace("__TOKEN_NEEDED__", "true" if token_needed else "false").replace(
        "__REFRESH_MS__", str(REFRESH_S * 1000)
    )
    return _PAGE.replace("__STYLE__", _STYLE).replace("__SCRIPT__", script)
